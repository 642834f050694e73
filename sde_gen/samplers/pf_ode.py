"""The probability-flow ODE (Song et al. 2021, eq. 13) solved with `torchdiffeq.odeint`:

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),   integrated from t = T down to t = t_min.

Its solution has the same marginals p_t as the forward SDE, so x(t_min) ~ p_{t_min} when
x(T) ~ p_T; the map x_T -> x_{t_min} is deterministic (used for likelihoods and inversion).

Two families of torchdiffeq methods (Chen et al. 2018, torchdiffeq):

* fixed-grid ("euler", "midpoint", "heun2", "heun3", "rk4"): the solver steps exactly on this
  sampler's time grid; each step costs a fixed number of evaluations (`FIXED_METHODS`), so the step
  count is derived from the NFE budget: num_steps = (nfe - denoise) // evals_per_step.
* adaptive ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8"): embedded Runge-Kutta
  pairs with error control at tolerances `rtol`/`atol`; the solver chooses its own steps and the
  NFE is whatever the tolerances require. The budget `nfe` then only bounds the step count
  through torchdiffeq's `max_num_steps` (a solve needing more steps fails with a clear error)
  and is NOT a bound on the evaluations: report and compare the returned `SampleResult.nfe`.

The grid is float64; torchdiffeq hands the right-hand side its time in the state's dtype, so in a
float32 solve the SDE coefficients are evaluated at float32 times (relative error ~1e-7, far below
the discretisation error of any budget). The ODE right-hand side does no host synchronisation (no `.item()`, no branching on values);
torchdiffeq's own loop does (its step-size control compares tensors on the host).
"""
from __future__ import annotations

from typing import Optional

import torch
from torchdiffeq import odeint

from .._validation import check_choice, check_positive, check_positive_int
from ..sdes import SDE
from .base import CountingScore, Sampler

#: fixed-grid torchdiffeq methods -> score evaluations per step
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
#: adaptive torchdiffeq methods -> their order
ADAPTIVE_METHODS = {"adaptive_heun": 2, "fehlberg2": 2, "bosh3": 3, "dopri5": 5, "dopri8": 8}
METHODS = tuple(FIXED_METHODS) + tuple(ADAPTIVE_METHODS)
_FIXED_ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


class _ProbabilityFlow:
    """dx/dt of the probability-flow ODE for torchdiffeq, plus its step callbacks.

    torchdiffeq calls `callback_step(t0, y0, dt)` before every step, so the state handed to it at
    step k is the state after step k - 1: that is where the user's callback is fired.
    """

    def __init__(self, sde: SDE, score: CountingScore, batch: int, ts: torch.Tensor, callback):
        self.sde, self.score, self.batch = sde, score, batch
        self.ts, self.user_callback = ts, callback
        self.steps = 0  # steps started (fixed grid) / accepted (adaptive), a Python int
        self.accepted = 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.expand(self.batch)
        return self.sde.probability_flow_drift(x, t, self.score(x, t))

    def callback_step(self, t0, y0, dt):
        if self.user_callback is not None and self.steps > 0 and self.steps < self.ts.numel():
            self.user_callback(self.steps - 1, self.ts[self.steps], y0)
        self.steps += 1

    def count_accepted(self, t0, y0, dt):
        self.accepted += 1


class ProbabilityFlowODE(Sampler):
    """Probability-flow ODE through `torchdiffeq.odeint`; works with every SDE of the library.

    Args:
        nfe: evaluation budget. Fixed-grid methods: the step count is (nfe - denoise) //
            evaluations-per-step, so the NFE spent is <= nfe. Adaptive methods: the budget only
            caps the number of solver steps (`max_num_steps`); the NFE spent may exceed it.
        method: a torchdiffeq method, one of `METHODS`.
        rtol, atol: tolerances of the adaptive methods (ignored by fixed-grid ones).
        max_num_steps: cap on adaptive steps (None: nfe, which no solve needing an NFE within the
            budget reaches since every step costs at least one evaluation).
        denoise, grid, rho, t_min: see `Sampler`. `grid` places the fixed-grid steps; adaptive
            methods integrate from T to t_min in one go.
    """

    name = "pf_ode"
    stochastic = False
    default_grid = "uniform"

    def __init__(
        self,
        nfe: int = 100,
        method: str = "rk4",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        max_num_steps: Optional[int] = None,
        denoise: bool = True,
        grid: Optional[str] = None,
        rho: float = 7.0,
        t_min: Optional[float] = None,
    ):
        self.method = check_choice("method", method, METHODS)
        self.adaptive = method in ADAPTIVE_METHODS
        self.evals_per_step = FIXED_METHODS.get(method, 1)
        self.order = float(ADAPTIVE_METHODS[method] if self.adaptive else _FIXED_ORDER[method])
        self.rtol = check_positive("rtol", rtol)
        self.atol = check_positive("atol", atol)
        self.max_num_steps = None if max_num_steps is None else check_positive_int("max_num_steps", max_num_steps)
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)

    def steps_for_budget(self, nfe: int) -> int:
        if self.adaptive:
            super().steps_for_budget(nfe)  # same minimum budget check
            return 1  # one output interval [T, t_min]; the solver picks its own steps inside it
        return super().steps_for_budget(nfe)

    def step(self, sde, score, x, t, t_next, generator, state):
        raise NotImplementedError("pf_ode runs its own loop in `solve` (torchdiffeq.odeint)")

    def solve(self, sde, score, x, ts, generator, callback):
        # adaptive steps do not lie on `ts`: their callback fires once, at the end
        func = _ProbabilityFlow(sde, score, x.shape[0], ts, None if self.adaptive else callback)
        ends = ts[[0, -1]]  # T, t_min; torchdiffeq flips the direction itself
        if self.adaptive:
            func.callback_accept_step = func.count_accepted  # only adaptive solvers accept/reject
            budget = self.max_num_steps or self.nfe
            # torchdiffeq's initial-step heuristic probes f at t0 + h0 with h0 ~ |x| / |f|, and the
            # probability-flow drift is ~0 at T (score ~ -x / s^2 cancels f): the probe lands at
            # t < 0, where the SDE is undefined (NaN). Start from 1% of the interval instead; the
            # controller grows it within a few steps. `jump_t` makes the last step land on t_min
            # exactly instead of overshooting it (below t = 0) and interpolating back.
            options = dict(max_num_steps=budget, first_step=1e-2 * (ends[0] - ends[1]), jump_t=ends[1:])
            try:
                x_out = odeint(func, x, ends, method=self.method, rtol=self.rtol, atol=self.atol, options=options)[-1]
            except AssertionError as err:  # torchdiffeq signals a spent step budget with an assert
                if "max_num_steps" not in str(err):
                    raise
                raise RuntimeError(
                    f"pf_ode: method {self.method!r} needed more than max_num_steps={budget} steps at "
                    f"rtol={self.rtol}, atol={self.atol}; loosen the tolerances or raise max_num_steps/nfe"
                ) from err
            self._steps_taken = func.accepted
        else:
            # step exactly on our float64 grid: torchdiffeq's grid_constructor replaces its own
            x_out = odeint(func, x, ends, method=self.method, options=dict(grid_constructor=lambda f, y0, t: ts))[-1]
            self._steps_taken = ts.numel() - 1
        if callback is not None:
            callback(ts.numel() - 2, ts[-1], x_out)
        return x_out

    def __call__(self, *args, **kwargs):
        result = super().__call__(*args, **kwargs)
        result.num_steps = self._steps_taken  # adaptive: the steps the solver accepted
        return result

    def __repr__(self) -> str:
        tol = f", rtol={self.rtol}, atol={self.atol}" if self.adaptive else ""
        return super().__repr__()[:-1] + f", method={self.method!r}{tol})"
