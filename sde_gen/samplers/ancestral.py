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
Weak order 1, one score evaluation per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_choice
from ..parameterization import x0_from_score
from ..utils import append_dims
from .base import GridSampler

VARIANCES = ("posterior", "beta")


@dataclass(eq=False, kw_only=True)
class Ancestral(GridSampler):
    """Ancestral sampling of the grid's exact discrete chain (DDPM for VP); every SDE.

    Args:
        variance: "posterior" (the DDPM posterior variance) or "beta" (the transition variance).
        (and the `Sampler` options nfe, denoise, grid, rho, t_min, check_finite)
    """

    name = "ancestral"
    evals_per_step = 1
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    variance: str = "posterior"

    def __post_init__(self):
        check_choice("variance", self.variance, VARIANCES)
        super().__post_init__()

    def step(self, sde, score, x, i, t, t_next, generator, state):
        x0_hat = x0_from_score(sde, x, t, score(x, t))
        mean, std = sde.posterior(x, x0_hat, t_next, t)
        if self.variance == "beta":
            std = sde.transition_coeffs(t_next, t)[1].sqrt().to(x.dtype)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + append_dims(std, x.ndim) * z
