"""The EDM SDE: sigma(t) = t, s(t) = 1 (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Sec. 3 and Table 1, "Ours").

In Karras et al.'s notation x_t = s(t) (x_0 + sigma(t) n); the choice sigma(t) = t, s(t) = 1 makes
the probability-flow ODE dx/dt = -t grad log p_t(x) (their eq. 4 with sigma_dot = 1), whose
trajectories are nearly straight. As an Ito SDE of Song et al. 2021 (eq. 5) it is the VE family
with f = 0 and g(t)^2 = d sigma^2 / dt = 2 t, so the time *is* the noise level: T = sigma_max and
eps = sigma_min.
"""
from __future__ import annotations

import torch

from .base import SDE


class EDMSDE(SDE):
    """dx = sqrt(2 t) dw on [0, T]: x_t | x_0 ~ N(x_0, t^2 I) (Karras et al. 2022, Table 1).

    Args:
        T: sigma_max, the largest noise level (Karras et al.: 80); the prior is N(0, T^2 I).
        eps: sigma_min, the smallest noise level used for training and sampling (Karras et al.: 0.002).

    Every quantity is a polynomial or log of t and non-negative by construction: s(t)^2 = t^2,
    s(0) = 0 exactly, v_{t|s} = (t - s)(t + s) clamped at 0 for s > t.
    """

    def __init__(self, T: float = 80.0, eps: float = 0.002):
        super().__init__(T=T, eps=eps)

    @property
    def sigma_min(self) -> float:
        """sigma_min = eps."""
        return self.eps

    @property
    def sigma_max(self) -> float:
        """sigma_max = T."""
        return self.T

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        # g(t) = sqrt(d t^2 / dt); t < 0 is outside the process and is clamped, never NaN
        return torch.sqrt(2 * t.clamp_min(0.0))

    def log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def marginal_var(self, t):
        return t ** 2

    def marginal_std(self, t):
        return t.abs()

    def transition_coeffs(self, s, t):
        # t^2 - s^2 = (t - s)(t + s): no cancellation for s near t; clamped for s > t (see `SDE`)
        return torch.ones_like(t), ((t - s) * (t + s)).clamp_min(0.0)

    def half_log_snr(self, t):
        # lambda = -log t: +inf at t = 0, never NaN
        return -torch.log(t.abs())

    def time_at_half_log_snr(self, lam):
        # t = e^{-lambda}: +inf -> 0 exactly, -inf -> +inf
        return torch.exp(-lam)

    @property
    def prior_std(self) -> float:
        return self.T
