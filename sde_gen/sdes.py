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
A float16 or bfloat16 `t` is the one exception: the schedule is evaluated in float32 and the
result rounded back to t's dtype (`_at_least_float32`), because intermediate quantities such as
exp(2 log(sigma_max / sigma_min)) overflow float16 although the results themselves fit.

Numerics that do not depend on the last bit of a float: every variance and standard deviation
is written in a form that cannot go negative (log a(t) <= 0 is clamped, differences that vanish
at t = 0 are formed so that they are exactly 0 there, whatever the rounding of the constants),
so s(0) = 0, lambda(0) = +inf and the inverse half log-SNR maps +inf to 0 exactly.
"""
from __future__ import annotations

import functools
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

#: dtypes too narrow for schedule arithmetic: evaluated in float32, rounded back at the end
_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: the scalar time functions of `SDE` that every subclass override gets wrapped in
#: `_at_least_float32` (by `SDE.__init_subclass__`), so a new SDE is low-precision safe unasked
_TIME_FUNCTIONS = (
    "drift_coeff",
    "diffusion",
    "log_mean_coeff",
    "marginal_var",
    "mean_coeff",
    "marginal_std",
    "marginal_coeffs",
    "half_log_snr",
    "time_at_half_log_snr",
    "transition_coeffs",
    "discrete_chain",
)


def _at_least_float32(fn):
    """Evaluate a scalar time function in at least float32; return it in the caller's dtype.

    Tensor arguments in float16 / bfloat16 are upcast to float32, the result (a tensor or a
    tuple of tensors) is cast back to the promoted dtype of the arguments. float32 and float64
    arguments pass through untouched, so for them time arithmetic still follows t's dtype.
    """
    if getattr(fn, "_at_least_float32", False):
        return fn

    def up(a):
        return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION else a

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not any(a.dtype in _LOW_PRECISION for a in tensors):
            return fn(self, *args, **kwargs)
        out_dtype = functools.reduce(torch.promote_types, (a.dtype for a in tensors))
        out = fn(self, *map(up, args), **{k: up(v) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            return tuple(o.to(out_dtype) for o in out)
        return out.to(out_dtype)

    wrapper._at_least_float32 = True
    return wrapper


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without overflow and without torch's linear cut-off above x = 20."""
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))


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


class SDE(nn.Module, ABC):
    """Abstract forward SDE with linear drift f(x, t) = f(t) x on the time range [0, T].

    Args:
        T: final time of the forward process.
        eps: smallest time used for training and sampling, in (0, T).

    Subclasses implement `drift_coeff`, `diffusion`, `log_mean_coeff`, `marginal_var` and
    `prior_std`. Everything else (marginals, transition kernels, posteriors, the reverse-time
    and probability-flow drifts, the prior) is derived here once.

    Contract of the scalar functions (checked for every registered SDE by tests/test_numerics.py):
    a(t) is finite with a(0) = 1, s(t)^2 >= 0 with s(0) = 0 exactly, lambda(t) is finite on (0, T]
    and +inf at t = 0, and `time_at_half_log_snr` is total on [-inf, +inf]. A subclass's overrides of
    the functions in `_TIME_FUNCTIONS` are wrapped in `_at_least_float32` when the class is
    created, so they need not care about float16 / bfloat16 themselves.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _TIME_FUNCTIONS:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _at_least_float32(fn))

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
        """s(t)^2 >= 0, the variance of x_t given x_0 (per dimension); exactly 0 at t = 0."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T used to start sampling."""

    # ---- derived scalar functions ----
    @_at_least_float32
    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) = exp(int_0^t f(u) du), shape like `t`."""
        return torch.exp(self.log_mean_coeff(t))

    @_at_least_float32
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """s(t) >= 0, shape like `t`."""
        return torch.sqrt(self.marginal_var(t))

    @_at_least_float32
    def marginal_coeffs(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a(t), s(t)): x_t | x_0 ~ N(a(t) x_0, s(t)^2 I). Both shaped like `t`."""
        return self.mean_coeff(t), self.marginal_std(t)

    @_at_least_float32
    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(a(t) / s(t)), strictly decreasing in t (Lu et al. 2022, DPM-Solver).

        Finite on (0, T]; +inf (never NaN) at t = 0, where s(0) = 0.
        """
        return self.log_mean_coeff(t) - 0.5 * torch.log(self.marginal_var(t))

    @_at_least_float32
    def time_at_half_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of `half_log_snr`: the t >= 0 with lambda(t) = lam, shape like `lam`.

        Total on the extended real line and never NaN: lam = +inf gives t = 0 exactly,
        lambda(T) gives T, lam < lambda(T) gives the t > T of the schedule continued past T,
        and lam = -inf gives +inf. The result is not clamped to [0, T] on purpose: the forward
        functions accept t > T as well, and adaptive ODE solvers (torchdiffeq's dopri5 in
        `likelihood`) step past the end of the span and interpolate back, so the map must stay
        smooth through T. Callers that need [0, T] clamp.

        The generic version brackets the root by doubling from T, then bisects (fixed counts,
        so no host sync is needed); subclasses with a closed form override it.
        """
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):
            hi = torch.where(self.half_log_snr(hi) > lam, 2 * hi, hi)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > lam  # lambda decreases, so the root is later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        # bisection only approaches the ends; lambda = +-inf are t = 0 and t = inf themselves
        t = torch.where(lam == math.inf, lo, 0.5 * (lo + hi))
        return torch.where(lam == -math.inf, math.inf, t)

    @_at_least_float32
    def transition_coeffs(self, s: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Coefficients of the kernel x_t | x_s ~ N(a_{t|s} x_s, v_{t|s} I) for s <= t.

        For s > t there is no forward kernel; rather than refuse (a data-dependent check would
        cost a host sync inside sampler loops) the variance is clamped: v_{t|s} = 0, while
        a_{t|s} = a(t) / a(s) is still returned as is. So v_{t|s} >= 0 for every (s, t), and
        v_{t|t} = 0, a_{t|t} = 1 exactly.

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
        c_t, c_0, std = self._posterior_coeffs(s, t)
        nd = x_t.ndim
        mean = append_dims(c_t.to(x_t.dtype), nd) * x_t + append_dims(c_0.to(x_t.dtype), nd) * x0
        return mean, std.to(x_t.dtype)

    @_at_least_float32
    def _posterior_coeffs(self, s: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(c_t, c_0, std) of `posterior`: the scalar part, in at least float32."""
        ratio, v = self.transition_coeffs(s, t)
        var_s, var_t = self.marginal_var(s), self.marginal_var(t)
        c_t = ratio * var_s / var_t
        c_0 = self.mean_coeff(s) * v / var_t
        return c_t, c_0, torch.sqrt(v * var_s / var_t)

    @_at_least_float32
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
        """log N(z; 0, prior_std^2 I) per sample, shape (B,), in the dtype of `z`.

        A float16 / bfloat16 `z` is summed in float32: sum(z^2) over an image overflows float16
        (prior_std = 50 already gives z^2 ~ 2500 per pixel) although log p itself fits.
        """
        d = event_numel(z)
        var = self.prior_std ** 2
        zz = z.float() if z.dtype in _LOW_PRECISION else z
        logp = -0.5 * batch_sum(zz ** 2) / var - 0.5 * d * math.log(2 * math.pi * var)
        return logp.to(z.dtype)

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
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min (allowed: [{self.beta_min}, inf)); got {beta_max!r}"
            )

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


#: name -> class, for string look-up (Hydra configs use `_target_`).
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def build_sde(name: str, **kwargs) -> SDE:
    """Construct an SDE by name (`"vp"`, `"subvp"` or `"ve"`) with keyword arguments."""
    check_choice("sde", name, SDES)
    return SDES[name](**kwargs)
