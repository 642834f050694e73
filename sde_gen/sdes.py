"""Forward SDEs dx = f(t) x dt + g(t) dw with affine (Gaussian) marginals.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations":
    forward SDE            dx = f(x, t) dt + g(t) dw                               (eq. 5)
    reverse-time SDE       dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar (eq. 6)
    probability-flow ODE   dx = [f(x, t) - 1/2 g(t)^2 grad log p_t(x)] dt         (eq. 13)

Every SDE here has a linear drift f(x, t) = f(t) x, so its transition kernel is Gaussian:
    x_t | x_0 ~ N(a(t) x_0, s(t)^2 I),  a(t) = exp(int_0^t f),  ds^2/dt = 2 f(t) s^2 + g(t)^2.
The base class `SDE` is written once in terms of the scalar functions log a(t), s(t)^2, f(t)
and g(t); a concrete SDE supplies those four (and, where it has one, a closed-form inverse of
the half log-SNR lambda(t) = log(a(t) / s(t)), which ODE solvers such as DPM-Solver use).

An SDE holds no step count: discretisation belongs to the samplers. Time arithmetic follows the
dtype of `t`, so samplers can keep their grids in float64; results are cast to the dtype of `x`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._validation import (
    check_choice,
    check_in_open_interval,
    check_positive,
    check_positive_int,
)
from .utils import append_dims, batch_sum, event_numel

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Score = Union[torch.Tensor, ScoreFn]

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "SDES", "build_sde"]


class SDE(nn.Module, ABC):
    """Abstract forward SDE with linear drift f(x, t) = f(t) x on the time range [0, T].

    Args:
        T: final time of the forward process.
        eps: smallest time used for training and sampling, in (0, T).

    Subclasses implement `drift_coeff`, `diffusion`, `log_mean_coeff`, `marginal_var` and
    `prior_std`. Everything else (marginals, transition kernels, posteriors, the reverse-time
    and probability-flow drifts, the prior) is derived here once.
    """

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        super().__init__()
        self.T = check_positive("T", T)
        self.eps = check_in_open_interval("eps", eps, 0.0, self.T)

    # ---- the scalar functions a concrete SDE supplies; all map (B,) -> (B,) in t's dtype ----
    @abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """f(t), with drift f(x, t) = f(t) x."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), the diffusion coefficient."""

    @abstractmethod
    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log a(t) = int_0^t f(u) du."""

    @abstractmethod
    def marginal_var(self, t: torch.Tensor) -> torch.Tensor:
        """s(t)^2, the variance of x_t given x_0 (per dimension)."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T used to start sampling."""

    # ---- derived scalar functions ----
    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) = exp(int_0^t f(u) du), shape like `t`."""
        return torch.exp(self.log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """s(t), shape like `t`."""
        return torch.sqrt(self.marginal_var(t))

    def marginal_coeffs(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a(t), s(t)): x_t | x_0 ~ N(a(t) x_0, s(t)^2 I). Both shaped like `t`."""
        return self.mean_coeff(t), self.marginal_std(t)

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(a(t) / s(t)), strictly decreasing in t (Lu et al. 2022, DPM-Solver)."""
        return self.log_mean_coeff(t) - 0.5 * torch.log(self.marginal_var(t))

    def time_at_half_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of `half_log_snr`: the t in [0, T] with lambda(t) = lam.

        The generic version bisects (60 halvings, a fixed count so no host sync is needed);
        subclasses with a closed form override it.
        """
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > lam  # lambda decreases, so the root is later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def transition_coeffs(self, s: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Coefficients of the kernel x_t | x_s ~ N(a_{t|s} x_s, v_{t|s} I) for s < t.

        Returns:
            `(a_{t|s}, v_{t|s})` with a_{t|s} = a(t) / a(s) and
            v_{t|s} = s(t)^2 - a_{t|s}^2 s(s)^2, both shaped like `t`.
        """
        log_ratio = self.log_mean_coeff(t) - self.log_mean_coeff(s)
        ratio = torch.exp(log_ratio)
        var = self.marginal_var(t) - torch.exp(2 * log_ratio) * self.marginal_var(s)
        return ratio, var.clamp_min(0.0)

    # ---- tensors ----
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = f(t) x. `x`: (B, *event), `t`: (B,). Returns a tensor like `x`."""
        return append_dims(self.drift_coeff(t).to(x.dtype), x.ndim) * x

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of x_t given x_0.

        Args:
            x0: data, shape (B, *event).
            t: times, shape (B,).

        Returns:
            `(mean, std)`: mean like `x0`, std of shape (B,) in the dtype of `x0`.
        """
        a, s = self.marginal_coeffs(t)
        return append_dims(a.to(x0.dtype), x0.ndim) * x0, s.to(x0.dtype)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = a(t) x_0 + s(t) z for given standard-normal `noise` like `x0`."""
        mean, std = self.marginal(x0, t)
        return mean + append_dims(std, x0.ndim) * noise

    def posterior(
        self, x_t: torch.Tensor, x0: torch.Tensor, s: torch.Tensor, t: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gaussian posterior q(x_s | x_t, x_0) for s < t (Ho et al. 2020, eq. 6-7, for any affine SDE).

        With a = a_{t|s}, v = v_{t|s} from `transition_coeffs`:
            mean = a s(s)^2 / s(t)^2 x_t + a(s) v / s(t)^2 x_0,  var = v s(s)^2 / s(t)^2.
        For the VP SDE this is the DDPM posterior with alpha_t = a^2, beta_t = v.

        Returns:
            `(mean, std)`: mean like `x_t`, std of shape (B,).
        """
        ratio, v = self.transition_coeffs(s, t)
        var_s, var_t = self.marginal_var(s), self.marginal_var(t)
        c_t = ratio * var_s / var_t
        c_0 = self.mean_coeff(s) * v / var_t
        std = torch.sqrt(v * var_s / var_t)
        nd = x_t.ndim
        mean = append_dims(c_t.to(x_t.dtype), nd) * x_t + append_dims(c_0.to(x_t.dtype), nd) * x0
        return mean, std.to(x_t.dtype)

    def discrete_chain(self, t_grid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The discrete Markov chain that matches this SDE exactly on a time grid.

        Args:
            t_grid: increasing times t_0 < t_1 < ... < t_N, shape (N + 1,).

        Returns:
            `(betas, alpha_bars)` of shape (N,) and (N + 1,): alpha_bar_i = a(t_i)^2 and
            1 - beta_i = alpha_bar_i / alpha_bar_{i-1}, so prod_{j<=i} (1 - beta_j) equals
            alpha_bar_i / alpha_bar_0 exactly. For the VP SDE these are the DDPM (beta_i,
            alpha_bar_i); the per-step noise variance of the chain is `transition_coeffs`.
        """
        log_a = self.log_mean_coeff(t_grid)
        betas = -torch.expm1(2 * (log_a[1:] - log_a[:-1]))
        return betas, torch.exp(2 * log_a)

    def reverse_drift(
        self, x: torch.Tensor, t: torch.Tensor, score: Score, probability_flow: bool = False
    ) -> torch.Tensor:
        """Drift of the reverse-time SDE (eq. 6) or of the probability-flow ODE (eq. 13).

        Returned as dx/dt in forward time: f(x, t) - c g(t)^2 score, c = 1 (SDE) or 1/2 (ODE).
        The reverse SDE integrates it from T down to 0 with diffusion g(t).

        Args:
            x: (B, *event). t: (B,).
            score: the score at (x, t) as a tensor like `x`, or a function `score_fn(x, t)`.
            probability_flow: True for the ODE drift.
        """
        if callable(score):
            score = score(x, t)
        c = 0.5 if probability_flow else 1.0
        g2 = append_dims((self.diffusion(t) ** 2).to(x.dtype), x.ndim)
        return self.drift(x, t) - c * g2 * score

    def probability_flow_drift(self, x: torch.Tensor, t: torch.Tensor, score: Score) -> torch.Tensor:
        """f(x, t) - 1/2 g(t)^2 score (Song et al. 2021, eq. 13)."""
        return self.reverse_drift(x, t, score, probability_flow=True)

    # ---- prior ----
    def prior_sample(
        self,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """Draw from the prior N(0, prior_std^2 I).

        Args:
            shape: (B, *event).
            generator: source of randomness; its device is used when `device` is None.
            device, dtype: of the result; None follows the generator, then torch's defaults.
        """
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, shape (B,)."""
        d = event_numel(z)
        var = self.prior_std ** 2
        return -0.5 * batch_sum(z ** 2) / var - 0.5 * d * math.log(2 * math.pi * var)

    def extra_repr(self) -> str:
        return f"T={self.T}, eps={self.eps}"

    def probability_flow_coeffs(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(k1, k2) such that the probability-flow drift is k1 x + k2 score (Song et al. 2021, eq. 13).

        The drift f(t) x - 1/2 g(t)^2 score is semi-linear (Lu et al. 2022, DPM-Solver, eq. 3.1):
        k1 = f(t), k2 = -1/2 g(t)^2. Every probability-flow solver (the `pf_ode` sampler, the
        likelihood) builds its right-hand side from these two scalars, so the drift is written once.

        Args:
            t: times, any shape (float64 recommended; the caller casts to x's dtype).

        Returns:
            `(k1, k2)`, both shaped and typed like `t`.
        """
        return self.drift_coeff(t), -0.5 * self.diffusion(t) ** 2


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
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min (allowed: [{self.beta_min}, inf)); got {beta_max!r}"
            )
        self.cosine_s = check_positive("cosine_s", cosine_s)
        if schedule == "cosine":
            s = self.cosine_s
            self._theta0 = 0.5 * math.pi * s / (1 + s)
            # theta at which the cosine rate reaches the cap, and the time it happens
            theta_cap = math.atan(self.beta_max * T * (1 + s) / math.pi)
            self._t_cap = min(T, T * ((1 + s) * 2 * theta_cap / math.pi - s))
            theta_at_cap = 0.5 * math.pi * (self._t_cap / T + s) / (1 + s)
            self._cap_log_ab = 2 * (math.log(math.cos(theta_at_cap)) - math.log(math.cos(self._theta0)))
            if self._t_cap <= 0:
                raise ValueError(
                    f"beta_max={beta_max!r} is below the cosine schedule's rate at t=0; "
                    "allowed: beta_max > pi tan(theta(0)) / (T (1 + cosine_s))"
                )

    # the schedule: beta(t) and log alpha_bar(t) = -int_0^t beta
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), the noise rate (shape like `t`)."""
        if self.schedule == "linear":
            return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)
        s = self.cosine_s
        theta = 0.5 * math.pi * (t.clamp(max=self._t_cap) / self.T + s) / (1 + s)
        rate = math.pi * torch.tan(theta) / (self.T * (1 + s))
        return torch.where(t < self._t_cap, rate, torch.full_like(t, self.beta_max))

    def _log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2 / self.T)
        s = self.cosine_s
        t_c = t.clamp(max=self._t_cap)
        theta = 0.5 * math.pi * (t_c / self.T + s) / (1 + s)
        log_ab = 2 * (torch.log(torch.cos(theta)) - math.log(math.cos(self._theta0)))
        return log_ab - self.beta_max * (t - self._t_cap).clamp_min(0.0)

    def _time_at_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            # solve 1/2 (b1 - b0) t^2 / T + b0 t + log_ab = 0 for t >= 0, cancellation-free form
            b0, k = self.beta_min, (self.beta_max - self.beta_min) / self.T
            return -2 * log_ab / (b0 + torch.sqrt(b0 ** 2 - 2 * k * log_ab))
        s = self.cosine_s
        cap_log_ab = self._cap_log_ab
        cos_theta = math.cos(self._theta0) * torch.exp(0.5 * log_ab.clamp_min(cap_log_ab))
        theta = torch.acos(cos_theta.clamp(max=1.0))
        t_before = self.T * ((1 + s) * 2 * theta / math.pi - s)
        t_after = self._t_cap + (cap_log_ab - log_ab) / self.beta_max
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
        log_ratio = 0.5 * (self._log_alpha_bar(t) - self._log_alpha_bar(s))
        return torch.exp(log_ratio), -torch.expm1(2 * log_ratio)

    def half_log_snr(self, t):
        log_ab = self._log_alpha_bar(t)
        return 0.5 * log_ab - 0.5 * torch.log(-torch.expm1(log_ab))

    def time_at_half_log_snr(self, lam):
        # alpha_bar / (1 - alpha_bar) = exp(2 lam)  =>  log alpha_bar = logsigmoid(2 lam)
        return self._time_at_log_alpha_bar(nn.functional.logsigmoid(2 * lam))

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
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min (allowed: [{self.beta_min}, inf)); got {beta_max!r}"
            )

    def beta(self, t):
        """beta(t) = beta_min + t / T (beta_max - beta_min)."""
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def _log_alpha_bar(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2 / self.T)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(2 * self._log_alpha_bar(t)))

    def log_mean_coeff(self, t):
        return 0.5 * self._log_alpha_bar(t)

    def marginal_var(self, t):
        return torch.expm1(self._log_alpha_bar(t)) ** 2

    def half_log_snr(self, t):
        log_ab = self._log_alpha_bar(t)
        return 0.5 * log_ab - torch.log(-torch.expm1(log_ab))

    def time_at_half_log_snr(self, lam):
        # with v = a(t): exp(lam) = v / (1 - v^2)  =>  v = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        log_v = math.log(2.0) + lam - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        log_ab = 2 * log_v
        b0, k = self.beta_min, (self.beta_max - self.beta_min) / self.T
        return -2 * log_ab / (b0 + torch.sqrt(b0 ** 2 - 2 * k * log_ab))

    @property
    def prior_std(self) -> float:
        return 1.0

    def extra_repr(self):
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, " + super().extra_repr()


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

    def sigma(self, t):
        """sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T), the geometric noise scale."""
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def marginal_var(self, t):
        return self.sigma_min ** 2 * torch.expm1(2 * self._log_ratio * t / self.T)

    def transition_coeffs(self, s, t):
        var = self.sigma_min ** 2 * (
            torch.exp(2 * self._log_ratio * t / self.T) - torch.exp(2 * self._log_ratio * s / self.T)
        )
        return torch.ones_like(t), var

    def half_log_snr(self, t):
        return -0.5 * torch.log(self.marginal_var(t))

    def time_at_half_log_snr(self, lam):
        return self.T * torch.log1p(torch.exp(-2 * lam) / self.sigma_min ** 2) / (2 * self._log_ratio)

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


#: name -> class, for string look-up (Hydra configs use `_target_`).
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def build_sde(name: str, **kwargs) -> SDE:
    """Construct an SDE by name (`"vp"`, `"subvp"` or `"ve"`) with keyword arguments."""
    check_choice("sde", name, SDES)
    return SDES[name](**kwargs)
