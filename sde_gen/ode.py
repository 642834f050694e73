"""The probability-flow ODE and its one solve, for the sampler and the likelihood.

Probability-flow ODE (Song et al. 2021, eq. 13): every SDE here has a linear drift, so

    dx/dt = f(t) x - 1/2 g(t)^2 score(x, t) = k1(t) x + k2(t) score(x, t)

with `(k1, k2) = SDE.probability_flow_coeffs(t)` (semi-linear form, Lu et al. 2022, eq. 3.1). The
same flow can be integrated against u = log sigma = -lambda(t) (lambda = `SDE.half_log_snr`): since
du/dt = g^2 / (2 s^2), dx/du = (dt/du) (k1 x + k2 score) with dt/du = 2 s(t)^2 / g(t)^2.

Three things live here, so that the `pf_ode` sampler and `sde_gen.likelihood` share them:

* `ODE_METHODS`, the one table of torchdiffeq methods (Chen et al. 2018): order, and evaluations per
  step on a fixed grid (None for the adaptive, error-controlled pairs);
* `ProbabilityFlow`, the right-hand side (optionally with the divergence for the instantaneous
  change of variables, Chen et al. 2018, Thm. 1), counting its evaluations without a host sync;
* `integrate`, the one solve: adaptive methods through one `odeint` call with its guards (a first
  step that keeps torchdiffeq's initial-step probe inside [t_min, T], a last step that lands on the
  end point, a clear error when `max_num_steps` is spent); fixed-grid methods on our own float64 grid
  in an explicit Runge-Kutta loop with torchdiffeq's tableaus that never reads a tensor on the host
  (torchdiffeq's own fixed-grid loop makes one host synchronisation per step on a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torchdiffeq import odeint

from ._validation import check_choice
from .sdes import SDE
from .utils import event_numel

__all__ = [
    "ODEMethod",
    "ODE_METHODS",
    "FIXED_GRID_METHODS",
    "ADAPTIVE_METHODS",
    "TIME_VARIABLES",
    "check_score_output",
    "ProbabilityFlow",
    "integrate",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: `divergence(x, t) -> (score, trace)` with trace (B,) or (M, B), see `likelihood.score_and_divergence`
DivergenceFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ODEMethod:
    """A torchdiffeq method.

    Attributes:
        order: convergence order of the method (for the adaptive pairs, of the solution they keep).
        evals_per_step: drift evaluations per step on a fixed grid; None for adaptive methods, whose
            steps and evaluations are chosen by the error control at `rtol`/`atol`.
    """

    order: int
    evals_per_step: Optional[int]

    @property
    def adaptive(self) -> bool:
        return self.evals_per_step is None


#: name -> method: fixed-grid Runge-Kutta methods, then embedded pairs with step-size control
ODE_METHODS = {
    "euler": ODEMethod(order=1, evals_per_step=1),
    "midpoint": ODEMethod(order=2, evals_per_step=2),
    "heun2": ODEMethod(order=2, evals_per_step=2),
    "heun3": ODEMethod(order=3, evals_per_step=3),
    "rk4": ODEMethod(order=4, evals_per_step=4),
    "adaptive_heun": ODEMethod(order=2, evals_per_step=None),
    "fehlberg2": ODEMethod(order=2, evals_per_step=None),
    "bosh3": ODEMethod(order=3, evals_per_step=None),
    "dopri5": ODEMethod(order=5, evals_per_step=None),
    "dopri8": ODEMethod(order=8, evals_per_step=None),
}
FIXED_GRID_METHODS = tuple(n for n, m in ODE_METHODS.items() if not m.adaptive)
ADAPTIVE_METHODS = tuple(n for n, m in ODE_METHODS.items() if m.adaptive)

#: independent variable of the flow: the SDE's time t, or u = log sigma(t) = -lambda(t)
TIME_VARIABLES = ("t", "log_sigma")


def check_score_output(score: torch.Tensor, x: torch.Tensor) -> None:
    """Raise unless `score` has x's shape, dtype and device.

    Broadcasting would otherwise turn a (B, 1) or (1, D) score for x of shape (B, D) into a silent
    wrong result. Called on the first evaluation only (shapes do not change during a solve).
    """
    if (
        not isinstance(score, torch.Tensor)
        or score.shape != x.shape
        or score.dtype != x.dtype
        or score.device != x.device
    ):
        got = (
            f"shape {tuple(score.shape)}, dtype {score.dtype}, device {score.device}"
            if isinstance(score, torch.Tensor)
            else f"a {type(score).__name__}"
        )
        raise ValueError(
            "score_fn(x, t) must return a tensor with the shape, dtype and device of x "
            f"(shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}); got {got}"
        )


class ProbabilityFlow:
    """dx/dtau of the probability-flow ODE for torchdiffeq, tau = t or u = log sigma.

    Called as `flow(tau, x)` it returns dx/dtau; built with a `divergence`, the state is
    `(x, delta)` and it returns `(dx/dtau, div_x dx/dtau)`, where div = D k1 + k2 tr(d score / dx):
    the linear part's divergence is exact and only the score is differentiated (by `divergence`).
    The coefficients are cast to the state's dtype (see `coefficients`). No host synchronisation.

    Args:
        sde: the forward SDE.
        score_fn: `score_fn(x, t)` -> tensor like x, t of shape (B,) in x's dtype.
        time_variable: "t" or "log_sigma".
        divergence: None (state x), or `divergence(x, t) -> (score, trace)` (state (x, delta)).

    Attributes:
        nfe: evaluations so far (a Python int).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, time_variable: str = "t", divergence: Optional[DivergenceFn] = None):
        self.sde, self.score_fn, self.divergence = sde, score_fn, divergence
        self.time_variable = check_choice("time_variable", time_variable, TIME_VARIABLES)
        self.nfe = 0

    def coefficients(self, tau: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, k1, k2) at tau, shaped like tau, with dx/dtau = k1 x + k2 score(x, t).

        In t they are computed in tau's dtype (torchdiffeq's: the state's), the arithmetic in which
        the score sees t (a network computes its own s(t) there): for VE, where k2 score ~ g^2 x /
        (2 s^2) is large, consistent rounding keeps a float32 solve ~20x closer to the float64 one
        than float64 coefficients do. In u they are float64.
        """
        if self.time_variable == "t":
            return (tau,) + tuple(self.sde.probability_flow_coeffs(tau))
        # u -> t in float64: the inverse log-SNR is ill-conditioned in float32 near t = 0
        tau = tau.to(torch.float64)
        t = self.sde.time_at_half_log_snr(-tau)
        k1, k2 = self.sde.probability_flow_coeffs(t)
        dt_du = 2 * self.sde.marginal_var(t) / self.sde.diffusion(t) ** 2  # du/dt = -dlambda/dt = g^2 / (2 s^2)
        return t, dt_du * k1, dt_du * k2

    def __call__(self, tau: torch.Tensor, state: State) -> State:
        x = state if self.divergence is None else state[0]
        t, k1, k2 = (c.to(x.dtype) for c in self.coefficients(tau))
        t = t.expand(x.shape[0])
        self.nfe += 1
        if self.divergence is None:
            score = self.score_fn(x, t)
        else:
            score, trace = self.divergence(x, t)
        if self.nfe == 1:
            check_score_output(score, x)
        dx = k1 * x + k2 * score
        if self.divergence is None:
            return dx
        return dx, event_numel(x) * k1 + k2 * trace


class _WithCallbacks:
    """`func` plus torchdiffeq's step callbacks (only the given ones: a fixed-grid solver warns about
    callbacks it cannot call, so absent hooks must be absent attributes)."""

    def __init__(self, func, callback_step=None, callback_accept_step=None):
        self.func = func
        if callback_step is not None:
            self.callback_step = callback_step
        if callback_accept_step is not None:
            self.callback_accept_step = callback_accept_step

    def __call__(self, t, y):
        return self.func(t, y)


#: explicit Runge-Kutta tableaus (c, A, b) of the fixed-grid methods, as torchdiffeq defines them
#: ("rk4" is its 3/8-rule variant, Kutta 1901); stage times c_i, stage weights A[i], solution weights b
_TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun2": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "heun3": ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": ((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
}


def _combine(y: State, dt: torch.Tensor, weights, ks) -> State:
    """y + dt * sum_j w_j k_j, for a tensor or a tuple state (zero weights skipped)."""
    terms = [(w, k) for w, k in zip(weights, ks) if w != 0.0]
    if not terms:
        return y
    if isinstance(y, tuple):
        return tuple(yi + dt.to(yi.dtype) * sum(w * k[i] for w, k in terms) for i, yi in enumerate(y))
    return y + dt.to(y.dtype) * sum(w * k for w, k in terms)


def _fixed_grid_solve(func, y0: State, grid: torch.Tensor, tableau, callback_step=None) -> State:
    """Explicit Runge-Kutta steps along `grid` (float64, either direction), without a host sync.

    torchdiffeq's fixed-grid loop compares the step's end time with the output times on the state's
    device at every step (`t1 >= t[j]`), a host synchronisation per step on a GPU; this loop only
    indexes the grid. The stage times are computed in float64 and handed to `func` in the state's
    dtype, as torchdiffeq hands them.
    """
    c, A, b = tableau
    dtype = (y0[0] if isinstance(y0, tuple) else y0).dtype
    y = y0
    for i in range(grid.numel() - 1):  # a Python count: no read of the grid's values
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        if callback_step is not None:
            callback_step(t0, y, dt)
        ks = []
        for c_s, a_s in zip(c, A):
            t_s = t1 if c_s == 1.0 else t0 + c_s * dt
            ks.append(func(t_s.to(dtype), _combine(y, dt, a_s, ks)))
        y = _combine(y, dt, b, ks)
    return y


def integrate(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    ends: torch.Tensor,
    method: str,
    *,
    grid: Optional[torch.Tensor] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_num_steps: Optional[int] = None,
    options: Optional[dict] = None,
    callback_step=None,
    callback_accept_step=None,
) -> State:
    """Solve dy/dtau = func(tau, y) from tau = ends[0] to ends[1].

    Adaptive methods: one `torchdiffeq.odeint` call. Fixed-grid methods: `_fixed_grid_solve` on
    `grid` (no host synchronisation per step), or torchdiffeq's own loop when `options` are given.

    Args:
        func: the right-hand side, e.g. a `ProbabilityFlow`.
        y0: the state at ends[0]: a tensor, or a tuple of tensors.
        ends: (2,) float64 start and end (either direction).
        method: a key of `ODE_METHODS`.
        grid: fixed-grid methods only (required there): the float64 grid from ends[0] to ends[1]
            on which the solver steps, exactly.
        rtol, atol: tolerances of the adaptive methods.
        max_num_steps: adaptive methods: the most steps allowed (None: torchdiffeq's limit).
        options: further `odeint` options (they take precedence over the guards set here; with a
            fixed-grid method they select torchdiffeq's own loop).
        callback_step, callback_accept_step: torchdiffeq's hooks `(t0, y0, dt)`.

    Returns:
        The state at ends[1], like `y0`.

    Raises:
        RuntimeError: an adaptive solve needed more than `max_num_steps` steps.
    """
    spec = ODE_METHODS[check_choice("method", method, ODE_METHODS)]
    opts = {}
    if spec.adaptive:
        # torchdiffeq's initial-step heuristic probes f at t0 + h0 with h0 ~ |y| / |f|; the sampler's
        # flow starts at T, where the drift is ~0 (score ~ -x / s^2 cancels f x), so the probe lands
        # outside [0, T], where the SDE is undefined (NaN). Start from 1% of the interval; the
        # controller grows it within a few steps. `jump_t` makes the last step land on ends[1]
        # exactly instead of overshooting it and interpolating back.
        opts.update(first_step=1e-2 * (ends[1] - ends[0]).abs(), jump_t=ends[1:])
        if max_num_steps is not None:
            opts["max_num_steps"] = max_num_steps
    else:
        if grid is None:
            raise ValueError(f"method={method!r} steps on a fixed grid: give `grid`")
        if not options:  # our own loop: no host synchronisation per step (see `_fixed_grid_solve`)
            return _fixed_grid_solve(func, y0, grid, _TABLEAUS[method], callback_step)
        # step exactly on our float64 grid: torchdiffeq's grid_constructor replaces its own
        opts["grid_constructor"] = lambda f, y, t: grid
    opts.update(options or {})
    hooked = _WithCallbacks(func, callback_step, callback_accept_step)
    try:
        ys = odeint(hooked, y0, ends, method=method, rtol=rtol, atol=atol, options=opts)
    except AssertionError as err:  # torchdiffeq signals a spent step budget with an assert
        if "max_num_steps" not in str(err):
            raise
        raise RuntimeError(
            f"method {method!r} needed more than max_num_steps={opts.get('max_num_steps')} steps at "
            f"rtol={rtol}, atol={atol}; loosen the tolerances or raise max_num_steps"
        ) from err
    return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]
