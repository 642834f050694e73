"""Heun's second-order method on the probability-flow ODE, with optional stochastic churn
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithm 2), generalised from the EDM process x = y + sigma n to every affine SDE.

Every SDE here has x_t = a(t) x_0 + s(t) z. In the scaled variable y = x / a(t) and the noise level
sigma(t) = s(t) / a(t) = exp(-lambda(t)) (lambda = `sde.half_log_snr`) it becomes y = x_0 + sigma z,
the EDM process, whose probability-flow ODE is (Karras et al. 2022, eq. 4 with s = 1, and App. B.2)

    dy / dsigma = (y - D(y; sigma)) / sigma = eps_hat = -s(t) score(x, t),

with D the denoiser (Tweedie's x0_hat). Algorithm 2, on a grid sigma_0 > ... > sigma_{N-1} > 0:

    gamma_i   = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
    sigma_hat = sigma_i (1 + gamma_i);  y_hat = y_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z
    d_i       = (y_hat - D(y_hat; sigma_hat)) / sigma_hat
    y_{i+1}   = y_hat + (sigma_{i+1} - sigma_hat) d_i                      (Euler)
    d'_i      = (y_{i+1} - D(y_{i+1}; sigma_{i+1})) / sigma_{i+1}
    y_{i+1}   = y_hat + (sigma_{i+1} - sigma_hat) (d_i + d'_i) / 2          (Heun correction)

The paper's grid ends at sigma_N = 0 and its last step is Euler: an Euler step to sigma = 0 gives
y_hat + (0 - sigma_hat)(y_hat - D)/sigma_hat = D(y_hat), i.e. exactly the base class's Tweedie
denoising step at t_min. So with `denoise=True` (the default) this sampler IS Algorithm 2: Heun
steps along our grid T -> t_min, then one Euler evaluation to sigma = 0.

NFE accounting: with b = nfe - denoise evaluations left for the grid, the sampler takes b // 2
Heun steps and, when b is odd, one more Euler step (the last one, at the lowest noise, as in the
paper), so the NFE spent equals the budget exactly. Global order 2 either way (a single Euler
step adds an O(h^2) local error). Churn makes the sampler stochastic (the SDE-like variant).
"""
from __future__ import annotations

from typing import Optional

import math

import torch

from .._validation import check_nonnegative, check_positive
from .base import Sampler


class Heun(Sampler):
    """Karras et al. 2022 Algorithm 2 (Heun + optional churn) for every SDE of the library.

    Args:
        nfe: evaluation budget (spent exactly: see the module docstring).
        S_churn: total churn (0 = deterministic ODE sampler). gamma_i = min(S_churn / N, sqrt(2) - 1).
        S_tmin, S_tmax: churn only where S_tmin <= sigma_i <= S_tmax (noise levels sigma = s/a).
        S_noise: scale of the added noise (slightly above 1 compensates detail loss in the paper).
        denoise, grid, rho, t_min: see `Sampler` (default grid "karras", rho = 7).
    """

    name = "heun"
    evals_per_step = 2
    stochastic = False
    order = 2.0
    default_grid = "karras"

    def __init__(
        self,
        nfe: int = 100,
        S_churn: float = 0.0,
        S_tmin: float = 0.0,
        S_tmax: float = math.inf,
        S_noise: float = 1.0,
        denoise: bool = True,
        grid: Optional[str] = None,
        rho: float = 7.0,
        t_min: Optional[float] = None,
    ):
        self.S_churn = check_nonnegative("S_churn", S_churn)
        self.S_tmin = check_nonnegative("S_tmin", S_tmin)
        if not isinstance(S_tmax, (int, float)) or isinstance(S_tmax, bool) or not S_tmax >= self.S_tmin:
            raise ValueError(f"S_tmax must be a real number >= S_tmin={self.S_tmin} (allowed: [S_tmin, inf]); got {S_tmax!r}")
        self.S_tmax = float(S_tmax)
        self.S_noise = check_positive("S_noise", S_noise)
        self.stochastic = self.S_churn > 0
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)
        #: whether the last step is Euler (an odd number of evaluations left for the grid)
        self.euler_last = (self.nfe - (1 if self.denoise else 0)) % 2 == 1

    def steps_for_budget(self, nfe: int) -> int:
        """b // 2 Heun steps plus one Euler step when b = nfe - denoise is odd."""
        budget = nfe - (1 if self.denoise else 0)
        if budget < 1:
            raise ValueError(f"nfe must be >= {2 if self.denoise else 1} for sampler 'heun' (denoise={self.denoise}); got {nfe}")
        return budget // 2 + budget % 2

    def init_state(self, sde, x, ts):
        """Every coefficient of the run at once, in float64 over the grid, then cast to x's dtype:
        the loop only indexes them (no per-step schedule arithmetic, no host sync)."""
        a, s = sde.marginal_coeffs(ts)
        sigma = s / a  # sigma(t) = s / a = exp(-lambda)
        gamma = min(self.S_churn / self.num_steps, math.sqrt(2) - 1)
        churn = (sigma >= self.S_tmin) & (sigma <= self.S_tmax) & (gamma > 0)
        # never raise the noise above sigma(T): the score is only defined on [0, T]
        raised = torch.minimum(sigma * (1 + gamma), sigma[0])
        # where there is no churn keep (sigma, t) bit for bit, not a round trip through lambda
        sigma_hat = torch.where(churn, raised, sigma)[:-1]
        t_hat = torch.where(churn, sde.time_at_half_log_snr(-torch.log(raised)), ts)[:-1]
        a_hat = torch.where(churn[:-1], sde.mean_coeff(t_hat), a[:-1])
        extra = (sigma_hat ** 2 - sigma[:-1] ** 2).clamp_min(0).sqrt() * self.S_noise
        coef = torch.stack(
            [
                a_hat / a[:-1],  # x_hat = (a_hat / a) x + a_hat extra z   (y_hat = y + extra z)
                a_hat * extra,
                1 / a_hat,  # y_hat = x_hat / a_hat
                a_hat * sigma_hat,  # s(t_hat): d = -s score = eps_hat = dy/dsigma
                sigma[1:] - sigma_hat,  # the step in sigma
                a[1:],
                s[1:],
            ],
            dim=1,
        )
        return {"i": 0, "coef": coef.to(x.dtype), "t_hat": t_hat}

    def step(self, sde, score, x, t, t_next, generator, state):
        i = state["i"]
        state["i"] = i + 1
        k_x, k_z, inv_a_hat, s_hat, h, a_next, s_next = state["coef"][i].unbind()
        t_hat = t
        if self.stochastic:  # churn: raise the noise from sigma_i to sigma_hat
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = k_x * x + k_z * z
            t_hat = state["t_hat"][i].expand_as(t)
        y = x * inv_a_hat
        d = -s_hat * score(x, t_hat)
        y_next = y + h * d  # Euler
        if not (self.euler_last and i == self.num_steps - 1):
            d_next = -s_next * score(a_next * y_next, t_next)
            y_next = y + (0.5 * h) * (d + d_next)  # Heun's correction
        return a_next * y_next
