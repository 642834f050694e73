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

import math
from dataclasses import dataclass

import torch

from .._validation import check_nonnegative, check_positive
from .base import GridSampler


@dataclass(eq=False, kw_only=True)
class Heun(GridSampler):
    """Karras et al. 2022 Algorithm 2 (Heun + optional churn) for every SDE of the library.

    Args:
        S_churn: total churn (0 = deterministic ODE sampler). gamma_i = min(S_churn / N, sqrt(2) - 1).
        S_tmin, S_tmax: churn only where S_tmin <= sigma_i <= S_tmax (noise levels sigma = s/a).
        S_noise: scale of the added noise (slightly above 1 compensates detail loss in the paper).
        (and the `Sampler` options; nfe is spent exactly, see the module docstring; default grid
        "karras", rho = 7)
    """

    name = "heun"
    evals_per_step = 2
    order = 2.0
    default_grid = "karras"

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0

    def __post_init__(self):
        self.S_churn = check_nonnegative("S_churn", self.S_churn)
        self.S_tmin = check_nonnegative("S_tmin", self.S_tmin)
        S_tmax = self.S_tmax
        if not isinstance(S_tmax, (int, float)) or isinstance(S_tmax, bool) or not S_tmax >= self.S_tmin:
            raise ValueError(f"S_tmax must be a real number >= S_tmin={self.S_tmin} (allowed: [S_tmin, inf]); got {S_tmax!r}")
        self.S_tmax = float(S_tmax)
        self.S_noise = check_positive("S_noise", self.S_noise)
        super().__post_init__()

    @property
    def stochastic(self) -> bool:
        """Churn injects fresh noise; without it the sampler is a deterministic ODE solver."""
        return self.S_churn > 0

    def steps_for(self, evals: int) -> int:
        """b // 2 Heun steps plus one Euler step when b = evals is odd."""
        return (evals + 1) // 2

    def init_state(self, sde, x, ts, evals):
        """Algorithm 2's noise levels over the grid, in float64, then cast to x's dtype."""
        N = ts.numel() - 1
        a, s = sde.marginal_coeffs(ts)
        sigma = s / a  # the EDM noise level sigma(t) = s / a = exp(-lambda) of y = x / a
        gamma = min(self.S_churn / N, math.sqrt(2) - 1)  # line 4's gamma_i inside the churn window
        churn = (sigma >= self.S_tmin) & (sigma <= self.S_tmax) & (gamma > 0)
        # line 5, sigma_hat = sigma_i + gamma_i sigma_i, never above sigma(T): the score is only
        # defined on [0, T]; without churn keep (sigma, t) bit for bit, not a round trip through lambda
        raised = torch.minimum(sigma * (1 + gamma), sigma[0])
        sigma_hat = torch.where(churn, raised, sigma)[:-1]
        t_hat = torch.where(churn, sde.time_at_half_log_snr(-torch.log(raised)), ts)[:-1]
        a_hat = torch.where(churn[:-1], sde.mean_coeff(t_hat), a[:-1])
        s_hat = torch.where(churn[:-1], a_hat * sigma_hat, s[:-1])
        cast = lambda v: v.to(x.dtype)  # noqa: E731
        return {
            "a": cast(a), "s": cast(s), "sigma": cast(sigma),
            "t_hat": t_hat, "sigma_hat": cast(sigma_hat), "a_hat": cast(a_hat), "s_hat": cast(s_hat),
            # line 6's noise scale sqrt(sigma_hat^2 - sigma_i^2) S_noise (the form cannot go negative)
            "churn_std": cast((sigma_hat ** 2 - sigma[:-1] ** 2).clamp_min(0).sqrt() * self.S_noise),
            # line 9: the paper's last step (to sigma = 0) is Euler; ours is when the budget is odd
            "second_order": [True] * (N - 1) + [evals >= 2 * N],
        }

    def step(self, sde, score, x, i, t, t_next, generator, state):
        c = state
        y_i = x / c["a"][i]  # the EDM variable y = x / a(t), noise level sigma_i
        y_hat = y_i
        if self.stochastic:
            eps_i = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # line 4
            y_hat = y_i + c["churn_std"][i] * eps_i  # line 6: raise the noise from sigma_i to sigma_hat
        t_hat = c["t_hat"][i].expand_as(t)
        # line 7: d_i = (y_hat - D(y_hat; sigma_hat)) / sigma_hat = eps_hat = -s(t_hat) score(x_hat, t_hat)
        d_i = -c["s_hat"][i] * score(c["a_hat"][i] * y_hat, t_hat)
        h = c["sigma"][i + 1] - c["sigma_hat"][i]  # sigma_{i+1} - sigma_hat
        y_next = y_hat + h * d_i  # line 8: Euler step from sigma_hat to sigma_{i+1}
        if c["second_order"][i]:  # line 9
            d_prime = -c["s"][i + 1] * score(c["a"][i + 1] * y_next, t_next)  # line 10
            y_next = y_hat + h * (0.5 * d_i + 0.5 * d_prime)  # line 11: the trapezoidal correction
        return c["a"][i + 1] * y_next
