"""The abstract forward SDE dx = f(t) x dt + g(t) dw with affine (Gaussian) marginals.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations":
    forward SDE            dx = f(x, t) dt + g(t) dw                               (eq. 5)
    reverse-time SDE       dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar (eq. 6)
    probability-flow ODE   dx = [f(x, t) - 1/2 g(t)^2 grad log p_t(x)] dt         (eq. 13)

With a linear drift f(x, t) = f(t) x the transition kernel is Gaussian:
    x_t | x_0 ~ N(a(t) x_0, s(t)^2 I),  a(t) = exp(int_0^t f),  ds^2/dt = 2 f(t) s^2 + g(t)^2.
`SDE` is written once in terms of the scalar functions log a(t), s(t)^2, f(t) and g(t); a concrete
SDE supplies those four (and, where it has one, a closed-form inverse of the half log-SNR
lambda(t) = log(a(t) / s(t)), which DPM-Solver uses). An SDE holds no step count. Time arithmetic
follows t's dtype (float16 / bfloat16: see `_numerics`); results are cast to x's dtype. Variances
are written in forms that cannot go negative, so s(0) = 0 and lambda(0) = +inf exactly.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._validation import check_in_open_interval, check_positive
from ..utils import append_dims, batch_sum, event_numel
from ._numerics import _LOW_PRECISION, _at_least_float32

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Score = Union[torch.Tensor, ScoreFn]

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

    def check_t_min(self, t_min: Optional[float] = None) -> float:
        """The last time of a reverse solve: `t_min` (None: `eps`) in (0, T) with s(t_min) > 0.

        The score (a network's output is scaled by 1 / s(t)) and Tweedie's denoising divide by
        s(t_min), so t_min = 0, or a t_min whose s underflows to 0, has no finite score. Samplers'
        grids and the likelihood both check here.

        Raises:
            ValueError naming t_min and the allowed range.
        """
        t_min = self.eps if t_min is None else t_min
        allowed = f"allowed: (0, T) = (0, {self.T}), where marginal_std(t_min) > 0"
        if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0 < t_min < self.T:
            raise ValueError(f"t_min must lie in (0, T) ({allowed}); got {t_min!r}")
        # the probe follows the SDE's own tables (never the default device); the score and Tweedie's
        # step divide by s(t_min)^2, so its variance, not only its std, must be representable: under
        # sigma(t) = t (EDM) a t_min of 5e-324 has s > 0 but s^2 = 0
        device = next((b.device for b in self.buffers()), torch.device("cpu"))
        probe = torch.tensor(float(t_min), dtype=torch.float64, device=device)
        std, var = float(self.marginal_std(probe)), float(self.marginal_var(probe))
        if not (std > 0 and var > 0):
            raise ValueError(
                f"t_min must lie in (0, T) with marginal_std(t_min) > 0 ({allowed}); got {t_min!r}, "
                f"whose marginal_std is {std!r} (variance {var!r})"
            )
        return float(t_min)

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
