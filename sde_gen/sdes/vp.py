"""Variance-preserving SDEs: VP with a linear or cosine beta(t) (Song et al. 2021, eq. 11) and
sub-VP (eq. 12). Both have a(t)^2 = alpha_bar(t) = exp(-int_0^t beta) and the prior N(0, I).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice, check_positive
from ._numerics import _at_least_float32
from .base import SDE


def _check_beta_range(beta_min: float, beta_max: float) -> tuple:
    """(beta_min, beta_max), both positive and beta_max >= beta_min; else a ValueError naming the field."""
    lo, hi = check_positive("beta_min", beta_min), check_positive("beta_max", beta_max)
    if hi < lo:
        raise ValueError(f"beta_max must be >= beta_min (allowed: [{lo}, inf)); got {beta_max!r}")
    return lo, hi


def _linear_log_alpha_bar(t: torch.Tensor, beta_min: float, beta_max: float, T: float) -> torch.Tensor:
    """log alpha_bar(t) = -int_0^t beta for beta(t) = beta_min + t / T (beta_max - beta_min), <= 0."""
    return (-(beta_min * t + 0.5 * (beta_max - beta_min) * t ** 2 / T)).clamp_max(0.0)


def _linear_time_at_log_alpha_bar(
    log_ab: torch.Tensor, beta_min: float, beta_max: float, T: float
) -> torch.Tensor:
    """Inverse of `_linear_log_alpha_bar` on [0, inf]: 0 -> 0 exactly, -inf -> +inf.

    Solves 1/2 k t^2 + b0 t = m, m = -log_ab >= 0 (log_ab > 0 is clamped to 0), as
    t = 2 m / (b0 + sqrt(b0^2 + 2 k m)) (no cancellation) for m <= 1 and, divided through by
    sqrt(m), as t = 2 sqrt(m) / (b0 / sqrt(m) + sqrt(b0^2 / m + 2 k)) for m > 1, where 2 k m
    could overflow. Past log_ab(T) this is the schedule continued beyond T.
    """
    b0, k = beta_min, (beta_max - beta_min) / T
    m = -log_ab.clamp_max(0.0)
    small = m.clamp_max(1.0)
    t_small = 2 * small / (b0 + torch.sqrt(b0 ** 2 + 2 * k * small))
    root = torch.sqrt(m.clamp_min(1.0))
    t_large = 2 * root / (b0 / root + torch.sqrt(b0 ** 2 / root ** 2 + 2 * k))
    return torch.where(m <= 1.0, t_small, t_large)


class VPSDE(SDE):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (Song et al. 2021, eq. 11).

    Marginal: a(t) = sqrt(alpha_bar(t)), s(t)^2 = 1 - alpha_bar(t), prior N(0, I).

    Schedules:
        "linear": beta(t) = beta_min + t / T (beta_max - beta_min), the continuous limit of the
            DDPM chain beta_i = beta(t_i) / N (Ho et al. 2020).
        "cosine": alpha_bar(t) = cos^2(theta(t)) / cos^2(theta(0)), theta(t) = pi/2 (t/T + s) / (1 + s)
            (Nichol & Dhariwal 2021, eq. 17), so beta(t) = pi tan(theta(t)) / (T (1 + s)). That rate
            diverges at t = T; Nichol & Dhariwal clip the discrete beta_i at 0.999 for the same
            reason. In continuous time the clip becomes a cap: beta(t) = min(beta_cos(t), beta_max),
            with alpha_bar integrated from the capped rate. `beta_min` is unused by this schedule.
            With delta(t) = theta(t) - theta(0), alpha_bar(t) = (cos delta - tan theta(0) sin delta)^2
            is evaluated as exp(2 log1p(-2 sin^2(delta/2) - tan theta(0) sin delta)): exactly 1 at
            t = 0 whatever the rounding of theta(0), and accurate relative to 1 - alpha_bar near 0
            (the quotient cos^2 theta(t) / cos^2 theta(0) is neither).

    Args:
        beta_min, beta_max: the linear schedule's end points; for "cosine", beta_max is the cap.
        schedule: "linear" or "cosine".
        cosine_s: the offset s of the cosine schedule.
        T, eps: time range (see `SDE`).
    """

    SCHEDULES = ("linear", "cosine")

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        schedule: str = "linear",
        cosine_s: float = 0.008,
        T: float = 1.0,
        eps: float = 1e-3,
    ):
        super().__init__(T=T, eps=eps)
        self.schedule = check_choice("schedule", schedule, self.SCHEDULES)
        self.beta_min, self.beta_max = _check_beta_range(beta_min, beta_max)
        self.cosine_s = check_positive("cosine_s", cosine_s)
        if schedule == "cosine":
            s = self.cosine_s
            self._theta0 = 0.5 * math.pi * s / (1 + s)
            # theta at which the cosine rate reaches the cap, and the time it happens
            theta_cap = math.atan(self.beta_max * self.T * (1 + s) / math.pi)
            self._t_cap = min(self.T, self.T * ((1 + s) * 2 * theta_cap / math.pi - s))
            if self._t_cap <= 0:
                raise ValueError(
                    f"beta_max={beta_max!r} is below the cosine schedule's rate at t=0; "
                    "allowed: beta_max > pi tan(theta(0)) / (T (1 + cosine_s))"
                )
            delta_cap = self._delta(self._t_cap)
            self._cap_log_ab = 2 * math.log1p(
                -2 * math.sin(0.5 * delta_cap) ** 2 - math.tan(self._theta0) * math.sin(delta_cap)
            )

    # the schedule: beta(t) and log alpha_bar(t) = -int_0^t beta
    @_at_least_float32
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), the noise rate (shape like `t`)."""
        if self.schedule == "linear":
            return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)
        s = self.cosine_s
        theta = 0.5 * math.pi * (t.clamp(max=self._t_cap) / self.T + s) / (1 + s)
        rate = math.pi * torch.tan(theta) / (self.T * (1 + s))
        return torch.where(t < self._t_cap, rate, torch.full_like(t, self.beta_max))

    def _delta(self, t):
        """delta(t) = theta(t) - theta(0) = pi/2 (t / T) / (1 + s): exactly 0 at t = 0."""
        return 0.5 * math.pi * (t / self.T) / (1 + self.cosine_s)

    def _log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar(t) <= 0, exactly 0 at t = 0 (clamped: no rounding may make it positive)."""
        if self.schedule == "linear":
            return _linear_log_alpha_bar(t, self.beta_min, self.beta_max, self.T)
        # cos(theta0 + delta) / cos(theta0) = 1 - 2 sin^2(delta/2) - tan(theta0) sin(delta)
        delta = self._delta(t.clamp(max=self._t_cap))
        shortfall = 2 * torch.sin(0.5 * delta) ** 2 + math.tan(self._theta0) * torch.sin(delta)
        log_ab = 2 * torch.log1p(-shortfall)
        return (log_ab - self.beta_max * (t - self._t_cap).clamp_min(0.0)).clamp_max(0.0)

    def _time_at_log_alpha_bar(self, log_ab: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """The t >= 0 with log alpha_bar(t) = log_ab, given also var = 1 - alpha_bar.

        Both are passed because each is accurate where the other is not (var near t = 0,
        log_ab near t = T); they must describe the same alpha_bar.
        """
        if self.schedule == "linear":
            return _linear_time_at_log_alpha_bar(log_ab, self.beta_min, self.beta_max, self.T)
        s, cap_log_ab = self.cosine_s, self._cap_log_ab
        log_ab = log_ab.clamp_max(0.0)
        # before the cap: theta = theta0 + delta with cos(theta) = r cos(theta0), r = sqrt(alpha_bar).
        # sin(theta)^2 = sin^2(theta0) + cos^2(theta0) var, and
        # sin(delta) = cos(theta0) var / (sin(theta) + r sin(theta0)), both free of cancellation,
        # so delta (and t) is exactly 0 when var is, and accurate relative to t near 0.
        c0, s0 = math.cos(self._theta0), math.sin(self._theta0)
        r = torch.exp(0.5 * log_ab.clamp_min(cap_log_ab))
        v = var.clamp(0.0, 1.0)
        sin_theta = torch.sqrt(s0 ** 2 + c0 ** 2 * v)
        delta = torch.atan2(c0 * v / (sin_theta + r * s0), r * c0 ** 2 + sin_theta * s0)
        t_before = self.T * (1 + s) * delta / (0.5 * math.pi)
        t_after = self._t_cap + (cap_log_ab - log_ab) / self.beta_max  # linear past the cap, to inf
        return torch.where(log_ab >= cap_log_ab, t_before, t_after)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def log_mean_coeff(self, t):
        return 0.5 * self._log_alpha_bar(t)

    def marginal_var(self, t):
        return -torch.expm1(self._log_alpha_bar(t))

    def transition_coeffs(self, s, t):
        # see `SDE.transition_coeffs`: for s > t, 2 log_ratio > 0 and the variance is clamped to 0
        log_ratio = 0.5 * (self._log_alpha_bar(t) - self._log_alpha_bar(s))
        return torch.exp(log_ratio), (-torch.expm1(2 * log_ratio)).clamp_min(0.0)

    def half_log_snr(self, t):
        log_ab = self._log_alpha_bar(t)  # <= 0, so the log below sees a value >= 0: +inf at t = 0
        return 0.5 * log_ab - 0.5 * torch.log(-torch.expm1(log_ab))

    def time_at_half_log_snr(self, lam):
        # alpha_bar / (1 - alpha_bar) = exp(2 lam)  =>  log alpha_bar = logsigmoid(2 lam),
        # 1 - alpha_bar = sigmoid(-2 lam): +inf -> (0, 0) -> t = 0, -inf -> (-inf, 1) -> t = inf
        log_ab = nn.functional.logsigmoid(2 * lam)
        return self._time_at_log_alpha_bar(log_ab, torch.sigmoid(-2 * lam))

    @property
    def prior_std(self) -> float:
        return 1.0

    def extra_repr(self):
        return (
            f"beta_min={self.beta_min}, beta_max={self.beta_max}, schedule={self.schedule!r}, "
            + super().extra_repr()
        )


class SubVPSDE(SDE):
    """Sub-VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw
    (Song et al. 2021, eq. 12), linear beta(t).

    Marginal: a(t) = exp(-1/2 int beta), s(t) = 1 - a(t)^2 (a variance bounded by the VP one);
    prior N(0, I).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        super().__init__(T=T, eps=eps)
        self.beta_min, self.beta_max = _check_beta_range(beta_min, beta_max)

    @_at_least_float32
    def beta(self, t):
        """beta(t) = beta_min + t / T (beta_max - beta_min)."""
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def _log_alpha_bar(self, t):
        return _linear_log_alpha_bar(t, self.beta_min, self.beta_max, self.T)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(2 * self._log_alpha_bar(t)))

    def log_mean_coeff(self, t):
        return 0.5 * self._log_alpha_bar(t)

    def marginal_var(self, t):
        return torch.expm1(self._log_alpha_bar(t)) ** 2

    def half_log_snr(self, t):
        log_ab = self._log_alpha_bar(t)  # <= 0: +inf at t = 0, never NaN
        return 0.5 * log_ab - torch.log(-torch.expm1(log_ab))

    def time_at_half_log_snr(self, lam):
        # with v = a(t): e^lam = v / (1 - v^2)  =>  v = (sqrt(u^2 + 4) - u) / 2, u = e^{-lam}.
        # lam >= 0 (u <= 1): log v = log1p(-u/2 (1 - u / (sqrt(u^2 + 4) + 2))), exactly 0 at u = 0;
        # lam < 0: log v = log 2 + lam - log1p(sqrt(1 + 4 e^{2 lam})), free of overflow down to -inf.
        u = torch.exp(-lam.clamp_min(0.0))
        log_v_pos = torch.log1p(-0.5 * u * (1 - u / (torch.sqrt(u ** 2 + 4) + 2)))
        lam_neg = lam.clamp_max(0.0)
        log_v_neg = math.log(2.0) + lam_neg - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam_neg)))
        log_ab = 2 * torch.where(lam >= 0, log_v_pos, log_v_neg)
        return _linear_time_at_log_alpha_bar(log_ab, self.beta_min, self.beta_max, self.T)

    @property
    def prior_std(self) -> float:
        return 1.0

    def extra_repr(self):
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, " + super().extra_repr()
