"""Variance-exploding SDE with the geometric NCSN noise scales (Song et al. 2021, eq. 9;
Song & Ermon 2019).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .._validation import check_positive, check_positive_int
from ._numerics import _at_least_float32, _softplus
from .base import SDE


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dw (Song et al. 2021, eq. 9),
    geometric sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T) (the NCSN noise scales).

    The marginal of the SDE started at x_0 at time 0 is N(x_0, (sigma(t)^2 - sigma_min^2) I):
    exactly what the forward process produces, so s(t) -> 0 as t -> 0. Prior N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        super().__init__(T=T, eps=eps)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min must be < sigma_max (allowed: (0, {self.sigma_max})); got {sigma_min!r}"
            )
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @_at_least_float32
    def sigma(self, t):
        """sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T), the geometric noise scale."""
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def _expm1_2(self, t):
        """(sigma(t) / sigma_min)^2 - 1 = expm1(2 log(sigma_max / sigma_min) t / T), >= 0 for t >= 0."""
        return torch.expm1(2 * self._log_ratio * t / self.T).clamp_min(0.0)

    def marginal_var(self, t):
        return self.sigma_min ** 2 * self._expm1_2(t)

    def transition_coeffs(self, s, t):
        # sigma(t)^2 - sigma(s)^2 = sigma(s)^2 expm1(2 log_ratio (t - s) / T): no cancellation for
        # s near t; for s > t it would be negative and is clamped to 0 (see `SDE.transition_coeffs`)
        var = self.sigma(s) ** 2 * torch.expm1(2 * self._log_ratio * (t - s) / self.T).clamp_min(0.0)
        return torch.ones_like(t), var

    def half_log_snr(self, t):
        # -log s(t), with sigma_min taken out of the log so that s(t)^2 itself is never formed
        return -math.log(self.sigma_min) - 0.5 * torch.log(self._expm1_2(t))

    def time_at_half_log_snr(self, lam):
        # s(t)^2 = e^{-2 lam}  =>  t = T log1p(e^{-2 lam} / sigma_min^2) / (2 log_ratio), with
        # log1p(e^x) as an overflow-free softplus: +inf -> 0 exactly, -inf -> inf
        x = -2 * lam - 2 * math.log(self.sigma_min)
        return self.T * _softplus(x) / (2 * self._log_ratio)

    def noise_levels(
        self, num_levels: int, device=None, dtype: torch.dtype = torch.float64
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Geometric NCSN noise levels sigma_1 > ... > sigma_L (Song & Ermon 2019) and their times.

        The levels run from s(T) down to s(eps), equally spaced in log sigma; times[i] is the
        t with s(t) = sigmas[i], the time at which a score network sees that noise level.

        Returns:
            `(sigmas, times)`, each of shape (num_levels,).
        """
        num_levels = check_positive_int("num_levels", num_levels)
        ends = torch.tensor([self.T, self.eps], dtype=dtype, device=device)
        log_s = 0.5 * torch.log(self.marginal_var(ends))
        if num_levels == 1:
            log_sigmas = log_s[:1]
        else:
            log_sigmas = torch.linspace(0, 1, num_levels, dtype=dtype, device=device)
            log_sigmas = log_s[0] + (log_s[1] - log_s[0]) * log_sigmas
        return torch.exp(log_sigmas), self.time_at_half_log_snr(-log_sigmas)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def extra_repr(self):
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, " + super().extra_repr()
