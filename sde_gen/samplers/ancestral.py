"""Ancestral sampling of the exact discrete chain on the grid (Ho et al. 2020, Alg. 2; Song et al.
2021, App. F for the VE / NCSN chain).

On the grid t_N = T > ... > t_0 = t_min the forward chain x_t = a_{t|s} x_s + sqrt(v_{t|s}) z is exact
(`SDE.transition_coeffs`). Ancestral sampling draws x_s from the Gaussian posterior q(x_s | x_t, x_0)
(`SDE.posterior`) with x_0 replaced by its Tweedie estimate
x0_hat = (x_t + s(t)^2 score(x_t, t)) / a(t):

    x_s = mu(x_t, x0_hat) + sigma z,   mu = a_{t|s} s(s)^2 / s(t)^2 x_t + a(s) v_{t|s} / s(t)^2 x0_hat.

For the VP SDE (alpha_t = a_{t|s}^2, beta_t = v_{t|s}, abar_t = a(t)^2) this mean is exactly Ho et al.'s
eps-form mean 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_hat), eps_hat = -s(t) score
(Ho et al. 2020, eq. 11); for the VE SDE it is x_t + (sigma_t^2 - sigma_s^2) score (Song et al. 2021,
eq. 47's NCSN counterpart). The same construction gives the sub-VP chain.

Reverse variance (Ho et al. 2020, Sec. 3.2, the two extreme choices):
    "posterior"  sigma^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t, i.e. v_{t|s} s(s)^2 / s(t)^2
    "beta"       sigma^2 = beta_t, i.e. v_{t|s} (the forward transition variance)
    "analytic"   the KL-optimal sigma^2 = lambda^2 + c_0^2 (s_t / a_t)^2 (1 - s_t^2 Gamma_t), clipped
                 (Bao et al. 2022, Analytic-DPM, Thm. 1-2; `sde_gen.analytic`), from `gamma`
    "analytic_extended"  per dimension, sigma_i^2 = lambda^2 + c_0^2 (s_t / a_t)^2 R_{t,i} from the fitted
                 residual R_t = E (z + s_t score)^2 (Bao et al. 2022b, Extended Analytic-DPM), from `residual`
Weak order 1, one score evaluation per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._validation import check_choice
from ..analytic import analytic_variance, extended_variance
from ..parameterization import x0_from_score
from ..utils import append_dims
from .base import GridSampler

VARIANCES = ("posterior", "beta", "analytic", "analytic_extended")


def check_analytic_inputs(variance: str, gamma, residual) -> None:
    """The table a reverse-variance choice needs is given: one ValueError naming it otherwise."""
    if variance == "analytic" and not callable(gamma):
        raise ValueError("gamma must be a callable t -> Gamma_t (e.g. sde_gen.estimate_gamma(...)) for "
                         f"variance='analytic'; got {gamma!r}")
    if variance == "analytic_extended" and not callable(residual):
        raise ValueError("residual must be a callable t -> R_t of shape (N, *event) (e.g. "
                         f"sde_gen.estimate_residual(...)) for variance='analytic_extended'; got {residual!r}")


def extended_std(sde, t: torch.Tensor, u: torch.Tensor, residual: Callable, x: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """(N, *event) per-dimension stds of Extended Analytic-DPM for the steps t -> u, in x's dtype."""
    r = residual(t).to(t)
    if r.shape[1:] != x.shape[1:]:
        raise ValueError(f"residual must return values of the data's event shape {tuple(x.shape[1:])}; "
                         f"got {tuple(r.shape[1:])}")
    return extended_variance(sde, t, u, r, eta=eta).sqrt().to(x.dtype)


@dataclass(eq=False, kw_only=True)
class Ancestral(GridSampler):
    """Ancestral sampling of the grid's exact discrete chain (DDPM for VP); every SDE.

    Args:
        variance: "posterior" (the DDPM posterior variance), "beta" (the transition variance) or
            "analytic" (Analytic-DPM's optimum; needs `gamma`) or "analytic_extended" (its per-dimension
            version; needs `residual`).
        gamma: for "analytic", Gamma_t = E||score||^2 / d as a function of (N,) float64 times
            (`sde_gen.estimate_gamma` on this sampler's grid, or a closed form).
        residual: for "analytic_extended", R_t = E (z + s_t score)^2 per dimension, (N,) times ->
            (N, *event) (`sde_gen.estimate_residual` on this sampler's grid, or a closed form).
        (and the `Sampler` options nfe, denoise, grid, rho, t_min, check_finite)
    """

    name = "ancestral"
    evals_per_step = 1
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    variance: str = "posterior"
    gamma: Optional[Callable] = None
    residual: Optional[Callable] = None

    def __post_init__(self):
        check_choice("variance", self.variance, VARIANCES)
        check_analytic_inputs(self.variance, self.gamma, self.residual)
        super().__post_init__()

    def init_state(self, sde, x, ts, evals=None):
        if self.variance not in ("analytic", "analytic_extended"):
            return {}
        # the per-step standard deviations, once per run in float64 (no host sync inside the loop)
        t, u = ts[:-1], ts[1:]
        if self.variance == "analytic":
            return {"std": analytic_variance(sde, t, u, self.gamma(t).to(ts)).sqrt().to(x.dtype)}
        return {"std": extended_std(sde, t, u, self.residual, x)}

    def step(self, sde, score, x, i, t, t_next, generator, state):
        x0_hat = x0_from_score(sde, x, t, score(x, t))
        mean, std = sde.posterior(x, x0_hat, t_next, t)
        if self.variance == "beta":
            std = sde.transition_coeffs(t_next, t)[1].sqrt().to(x.dtype)
        elif self.variance == "analytic":
            std = state["std"][i].expand(x.shape[0])
        elif self.variance == "analytic_extended":
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return mean + state["std"][i] * z  # (*event) stds broadcast over the batch
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + append_dims(std, x.ndim) * z
