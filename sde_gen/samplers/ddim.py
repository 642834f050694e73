"""DDIM: denoising diffusion implicit models (Song, Meng & Ermon 2021, eq. 12), for every
affine SDE x_t = a(t) x_0 + s(t) z (DDPM's sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) for VP).

From t to an earlier time u < t on any grid (any subset of times), with eps_hat = -s(t) score(x_t, t)
and x0_hat = (x_t - s(t) eps_hat) / a(t) (Tweedie):

    x_u = a(u) x0_hat + sqrt(s(u)^2 - sigma^2) eps_hat + sigma z,   z ~ N(0, I),
    sigma = eta * std of q(x_u | x_t, x_0)   (`sde.posterior`; the paper's eq. 16 for VP).

With `variance="analytic"` (and eta > 0) the noise is Analytic-DPM's KL-optimal sigma^2 = lambda^2 +
c_0^2 (s_t / a_t)^2 (1 - s_t^2 Gamma_t) for the same mean, lambda = eta * posterior std, c_0 = a_u -
dir_coef a_t / s_t (Bao et al. 2022, Thm. 1-2; `sde_gen.analytic`); `variance="analytic_extended"` uses its
per-dimension version lambda^2 + c_0^2 (s_t / a_t)^2 R_{t,i} from the fitted residual (Bao et al. 2022b).

eta = 0 is the deterministic DDIM sampler, a first-order discretisation of the probability-flow ODE
(Song et al. 2021a, Sec. 4.3) whose update is invertible: run from t_min up to T (`invert`) it maps
data to noise. eta = 1 gives sqrt(s_u^2 - sigma^2) = a_{t|u} s_u^2 / s_t, so x_u's mean is
a_{t|u} s_u^2 / s_t^2 x_t + a_u v_{t|u} / s_t^2 x0_hat: exactly the posterior q(x_u | x_t, x0_hat),
i.e. DDPM ancestral sampling (Ho et al. 2020, eq. 6-7) on the same grid.

`slerp` and `DDIM.interpolate`: spherical interpolation between two inverted latents, decoded by the
deterministic sampler (Song, Meng & Ermon 2021, Sec. 5.3 and Fig. 6; slerp: Shoemake 1985, as in
White 2016 for Gaussian latents, whose norms concentrate near sqrt(d) where linear mixing shrinks them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .._validation import check_choice, check_in_closed_interval
from ..analytic import analytic_variance
from ..utils import append_dims
from .ancestral import check_analytic_inputs, extended_std
from .base import CountingScore, GridSampler


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """Spherical linear interpolation sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1,
    theta the angle between z0 and z1 per sample (Shoemake 1985).

    Args:
        z0, z1: (B, *event) end points (e.g. two `DDIM.invert` latents).
        alpha: a float or a (B,) tensor in [0, 1]; 0 gives z0 and 1 gives z1 exactly.

    Returns:
        (B, *event). For |z0| = |z1| every point keeps that norm and makes the angle alpha theta with z0;
        nearly parallel end points (sin theta < 1e-6) fall back to the linear mix, its limit.
    """
    if z0.shape != z1.shape or z0.ndim < 2:
        raise ValueError(f"z0 and z1 must have the same shape (B, *event); got {tuple(z0.shape)} and {tuple(z1.shape)}")
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=z0.device)
    if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape[0] != z0.shape[0]) or ((alpha < 0) | (alpha > 1)).any():
        raise ValueError(f"alpha must be a float or a ({z0.shape[0]},) tensor in [0, 1]; got {alpha}")
    a, b = z0.flatten(1).to(torch.float64), z1.flatten(1).to(torch.float64)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    flat = sin < 1e-6
    safe = torch.where(flat, torch.ones_like(sin), sin)
    w0 = torch.where(flat, 1 - alpha, torch.sin((1 - alpha) * theta) / safe)
    w1 = torch.where(flat, alpha * torch.ones_like(sin), torch.sin(alpha * theta) / safe)
    w0 = torch.where(alpha == 0, torch.ones_like(w0), torch.where(alpha == 1, torch.zeros_like(w0), w0))
    w1 = torch.where(alpha == 0, torch.zeros_like(w1), torch.where(alpha == 1, torch.ones_like(w1), w1))
    out = append_dims(w0, z0.ndim) * z0.to(torch.float64) + append_dims(w1, z0.ndim) * z1.to(torch.float64)
    return out.to(z0.dtype)


@dataclass(eq=False, kw_only=True)
class DDIM(GridSampler):
    """DDIM (eta in [0, 1]) on the sampler's time grid; works with every SDE of the library.

    Args:
        eta: 0 = deterministic DDIM, 1 = DDPM ancestral sampling; in between interpolates.
        variance: "eta" (sigma = eta * posterior std), "analytic" (Analytic-DPM, needs eta > 0 and `gamma`)
            or "analytic_extended" (per dimension, needs eta > 0 and `residual`).
        gamma: for "analytic", Gamma_t = E||score||^2 / d as a function of (N,) float64 times.
        residual: for "analytic_extended", R_t = E (z + s_t score)^2, (N,) times -> (N, *event).
        (and the `Sampler` options; one evaluation per step)
    """

    name = "ddim"
    evals_per_step = 1
    order = 1.0
    default_grid = "uniform"

    eta: float = 0.0
    variance: str = "eta"
    gamma: Optional[Callable] = None
    residual: Optional[Callable] = None

    def __post_init__(self):
        self.eta = check_in_closed_interval("eta", self.eta, 0.0, 1.0)
        check_choice("variance", self.variance, ("eta", "analytic", "analytic_extended"))
        if self.variance != "eta" and self.eta == 0:
            raise ValueError(f"variance={self.variance!r} needs eta in (0, 1]; got eta={self.eta!r}")
        check_analytic_inputs(self.variance, self.gamma, self.residual)
        super().__post_init__()

    @property
    def stochastic(self) -> bool:
        """eta > 0 adds fresh noise at every step."""
        return self.eta > 0

    def init_state(self, sde, x, ts, evals=None):
        """The paper's coefficients for every step t = ts[i] -> u = ts[i + 1], float64 then x's dtype.

        With the paper's sqrt(alpha_t) = a(t), sqrt(1 - alpha_t) = s(t) (any affine SDE), and the
        noise sigma = eta * std of q(x_u | x_t, x_0) (eq. 16; `sde.posterior`'s std). On a grid run
        upwards (`invert`) only eta = 0 is allowed, and sigma = 0.
        """
        t, u = ts[:-1], ts[1:]
        a_t, s_t = sde.marginal_coeffs(t)
        a_u, s_u = sde.marginal_coeffs(u)
        if self.eta > 0:
            v = sde.transition_coeffs(u, t)[1]  # v_{t|u}
            sigma = self.eta * torch.sqrt(v * sde.marginal_var(u) / sde.marginal_var(t))
        else:
            sigma = torch.zeros_like(t)
        # sqrt(1 - alpha_{t-1} - sigma_t^2) of eq. 12, in a form that cannot go negative
        dir_coef = torch.sqrt((s_u ** 2 - sigma ** 2).clamp_min(0))
        if self.variance == "analytic":  # the same mean, the KL-optimal noise (Bao et al. 2022)
            sigma = analytic_variance(sde, t, u, self.gamma(t).to(t), eta=self.eta).sqrt()
        elif self.variance == "analytic_extended":  # (N, *event): broadcasts over the batch in `step`
            sigma = extended_std(sde, t, u, self.residual, x, eta=self.eta)
        return {k: v.to(x.dtype) for k, v in dict(a_t=a_t, s_t=s_t, a_u=a_u, dir_coef=dir_coef, sigma=sigma).items()}

    def step(self, sde, score, x, i, t, t_next, generator, state):
        c = state
        eps_hat = -c["s_t"][i] * score(x, t)  # eps_theta(x_t): the noise prediction, -s(t) score
        x0_hat = (x - c["s_t"][i] * eps_hat) / c["a_t"][i]  # eq. 12, "predicted x_0" (Tweedie)
        x_u = c["a_u"][i] * x0_hat + c["dir_coef"][i] * eps_hat  # + "direction pointing to x_t"
        if self.stochastic:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_u = x_u + c["sigma"][i] * z  # + "random noise" sigma_t eps_t
        return x_u

    def invert(self, sde, score_fn, x: torch.Tensor, callback=None) -> torch.Tensor:
        """DDIM inversion: run the deterministic (eta = 0) update up the grid, t_min -> T.

        Args:
            sde: the forward SDE. score_fn: `score_fn(x, t)`.
            x: (B, *event) states at t_min (not denoised data: the inverse of `denoise` is not defined).
            callback: `callback(i, t_next, x)` after every step.

        Returns:
            x_T of shape like `x`, the latent that `self(..., x_T=...)` (with denoise=False) maps back to x.
        """
        if self.eta != 0:
            raise ValueError(f"invert needs the deterministic sampler, eta = 0; got eta={self.eta!r}")
        self.check_sde(sde)
        score = CountingScore(score_fn)
        with torch.no_grad():
            # the grid loop on the reversed grid: the eta = 0 update is its own inverse map
            x, _ = self.solve(sde, score, x, self.time_grid(sde, device=x.device).flip(0), None, callback)
        return x

    def interpolate(self, sde, score_fn, x_a: torch.Tensor, x_b: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """Decode the spherical interpolation between the DDIM latents of x_a and x_b (Song et al. 2021a, Sec. 5.3).

        Both are inverted on this sampler's grid (`invert`), mixed by `slerp` at each alpha, and decoded by
        the same deterministic update down the same grid (without the final denoising step, so alpha = 0
        and 1 give x_a and x_b back up to the discretisation's round-trip error).

        Args:
            sde: the forward SDE. score_fn: `score_fn(x, t)`.
            x_a, x_b: (B, *event) states at t_min (pairs to interpolate between).
            alphas: (M,) values in [0, 1].

        Returns:
            (M, B, *event) decoded states; row m interpolates at alphas[m].
        """
        if self.eta != 0:
            raise ValueError(f"interpolate needs the deterministic sampler, eta = 0; got eta={self.eta!r}")
        if x_a.shape != x_b.shape:
            raise ValueError(f"x_a and x_b must have the same shape; got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        alphas = torch.as_tensor(alphas, dtype=torch.float64).flatten()
        if alphas.numel() == 0 or ((alphas < 0) | (alphas > 1)).any():
            raise ValueError(f"alphas must be a non-empty (M,) tensor of values in [0, 1]; got {alphas}")
        B = x_a.shape[0]
        z = self.invert(sde, score_fn, torch.cat([x_a, x_b]))
        z_a, z_b = z[:B], z[B:]
        mixed = torch.cat([slerp(z_a, z_b, float(a)) for a in alphas.tolist()])  # (M * B, *event)
        decoder = dataclasses.replace(self, nfe=self.nfe - int(self.denoise), denoise=False)  # the same grid
        out = decoder(sde, score_fn, x_T=mixed).samples
        return out.view(alphas.numel(), B, *x_a.shape[1:])
