"""DDIM: denoising diffusion implicit models (Song, Meng & Ermon 2021, eq. 12), for every
affine SDE x_t = a(t) x_0 + s(t) z (DDPM's sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) for VP).

From t to an earlier time u < t on any grid (any subset of times), with eps_hat = -s(t) score(x_t, t)
and x0_hat = (x_t - s(t) eps_hat) / a(t) (Tweedie):

    x_u = a(u) x0_hat + sqrt(s(u)^2 - sigma^2) eps_hat + sigma z,   z ~ N(0, I),
    sigma = eta * std of q(x_u | x_t, x_0)   (`sde.posterior`; the paper's eq. 16 for VP).

eta = 0 is the deterministic DDIM sampler, a first-order discretisation of the probability-flow ODE
(Song et al. 2021a, Sec. 4.3) whose update is invertible: run from t_min up to T (`invert`) it maps
data to noise. eta = 1 gives sqrt(s_u^2 - sigma^2) = a_{t|u} s_u^2 / s_t, so x_u's mean is
a_{t|u} s_u^2 / s_t^2 x_t + a_u v_{t|u} / s_t^2 x0_hat: exactly the posterior q(x_u | x_t, x0_hat),
i.e. DDPM ancestral sampling (Ho et al. 2020, eq. 6-7) on the same grid.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_in_closed_interval
from ..utils import append_dims
from .base import CountingScore, Sampler


class DDIM(Sampler):
    """DDIM (eta in [0, 1]) on the sampler's time grid; works with every SDE of the library.

    Args:
        nfe: evaluation budget; one evaluation per step.
        eta: 0 = deterministic DDIM, 1 = DDPM ancestral sampling; in between interpolates.
        denoise, grid, rho, t_min: see `Sampler`.
    """

    name = "ddim"
    evals_per_step = 1
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    def __init__(self, nfe: int = 100, eta: float = 0.0, denoise: bool = True, grid: Optional[str] = None, rho: float = 7.0, t_min: Optional[float] = None):
        self.eta = check_in_closed_interval("eta", eta, 0.0, 1.0)
        self.stochastic = self.eta > 0
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)

    def coefficients(self, sde, t: torch.Tensor, u: torch.Tensor):
        """Float64 (B,) coefficients (c_x, c_eps, sigma) of x_u = c_x x_t + c_eps eps_hat + sigma z.

        c_x = a_u / a_t (from a_u x0_hat) and c_eps = sqrt(s_u^2 - sigma^2) - a_u s_t / a_t.
        For u > t (inversion) only eta = 0 makes sense and sigma = 0.
        """
        a_t, s_t = sde.marginal_coeffs(t)
        a_u, s_u = sde.marginal_coeffs(u)
        if self.eta > 0:
            _, v = sde.transition_coeffs(u, t)  # v_{t|u}
            sigma = self.eta * torch.sqrt(v * sde.marginal_var(u) / sde.marginal_var(t))
        else:
            sigma = torch.zeros_like(t)
        c_x = a_u / a_t
        c_eps = torch.sqrt((s_u ** 2 - sigma ** 2).clamp_min(0)) - c_x * s_t
        return c_x, c_eps, sigma

    def init_state(self, sde, x, ts):
        """The coefficients of every step at once (float64 over the grid, cast to x's dtype)."""
        c_x, c_eps, sigma = self.coefficients(sde, ts[:-1], ts[1:])
        s_t = sde.marginal_std(ts[:-1])
        return {"i": 0, "coef": torch.stack([c_x, c_eps * s_t, sigma], dim=1).to(x.dtype)}

    def step(self, sde, score, x, t, t_next, generator, state):
        if "coef" in state:
            i = state["i"]
            state["i"] = i + 1
            c_x, c_score, sigma = state["coef"][i].unbind()
        else:  # a single step outside a run (t, t_next of shape (B,))
            c_x, c_eps, sigma = self.coefficients(sde, t, t_next)
            c_x, c_score, sigma = (append_dims(v.to(x.dtype), x.ndim) for v in (c_x, c_eps * sde.marginal_std(t), sigma))
        # eps_hat = -s_t score, so c_eps eps_hat = -(c_eps s_t) score
        x_next = c_x * x - c_score * score(x, t)
        if self.stochastic:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_next = x_next + sigma * z
        return x_next

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
            # the base loop on the reversed grid: the eta = 0 update is its own inverse map
            x = self.solve(sde, score, x, self.time_grid(sde, device=x.device).flip(0), None, callback)
        return x
