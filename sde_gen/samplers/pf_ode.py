"""The probability-flow ODE (Song et al. 2021, eq. 13) solved with torchdiffeq's Runge-Kutta methods:

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),   integrated from t = T down to t = t_min.

Its solution has the same marginals p_t as the forward SDE, so x(t_min) ~ p_{t_min} when
x(T) ~ p_T; the map x_T -> x_{t_min} is deterministic (used for likelihoods and inversion).

Two families of torchdiffeq methods (Chen et al. 2018, torchdiffeq):

* fixed-grid ("euler", "midpoint", "heun2", "heun3", "rk4"; torchdiffeq's tableaus, stepped by
  `sde_gen.ode`'s own loop): the solver steps exactly on this sampler's time grid; each step costs a fixed number of evaluations (`sde_gen.ode.ODE_METHODS`), so the step
  count is derived from the NFE budget: num_steps = (nfe - denoise) // evals_per_step.
* adaptive ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8"): embedded Runge-Kutta
  pairs with error control at tolerances `rtol`/`atol`; the solver chooses its own steps and the
  NFE is whatever the tolerances require. The budget `nfe` then only bounds the step count
  through torchdiffeq's `max_num_steps` (a solve needing more steps fails with a clear error)
  and is NOT a bound on the evaluations: report and compare the returned `SampleResult.nfe`.

The right-hand side, the method table and the solve (`integrate`) are `sde_gen.ode`'s, shared with
the likelihood. The grid is float64; the right-hand side gets its time in the state's dtype (as
torchdiffeq hands it), so in a float32 solve the SDE coefficients are evaluated at float32 times, like the
score (relative error ~1e-7, far below the discretisation error of any budget). The ODE right-hand
side does no host synchronisation, nor does the fixed-grid loop; the adaptive methods' torchdiffeq
loop does (its step-size control compares tensors on the host).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .._validation import check_choice, check_positive, check_positive_int
from ..ode import ODE_METHODS, ProbabilityFlow, integrate
from .base import Sampler

#: the torchdiffeq methods this sampler accepts (`sde_gen.ode.ODE_METHODS`)
METHODS = tuple(ODE_METHODS)


@dataclass(eq=False, kw_only=True)
class ProbabilityFlowODE(Sampler):
    """Probability-flow ODE with a fixed-grid or adaptive Runge-Kutta method; works with every SDE of the library.

    Args:
        nfe: evaluation budget. Fixed-grid methods: the step count is (nfe - denoise) //
            evaluations-per-step, so the NFE spent is <= nfe. Adaptive methods: the budget only
            caps the number of solver steps (`max_num_steps`); the NFE spent may exceed it.
        method: a torchdiffeq method, one of `METHODS`.
        rtol, atol: tolerances of the adaptive methods (ignored by fixed-grid ones).
        max_num_steps: cap on adaptive steps (None: nfe, which no solve needing an NFE within the
            budget reaches since every step costs at least one evaluation).
        (and the `Sampler` options; `grid` places the fixed-grid steps, adaptive methods integrate
        from T to t_min in one go)
    """

    name = "pf_ode"
    stochastic = False
    default_grid = "uniform"

    method: str = "rk4"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_num_steps: Optional[int] = None

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        self.rtol = check_positive("rtol", self.rtol)
        self.atol = check_positive("atol", self.atol)
        if self.max_num_steps is not None:
            check_positive_int("max_num_steps", self.max_num_steps)
        super().__post_init__()

    @property
    def adaptive(self) -> bool:
        return ODE_METHODS[self.method].adaptive

    @property
    def order(self) -> float:
        return float(ODE_METHODS[self.method].order)

    @property
    def evals_per_step(self) -> Optional[int]:
        """Evaluations per fixed-grid step; None for adaptive methods."""
        return ODE_METHODS[self.method].evals_per_step

    def steps_for(self, evals: int) -> int:
        if self.adaptive:  # one output interval [T, t_min]; the solver picks its own steps inside it
            return min(evals, 1)
        return evals // self.evals_per_step

    def solve(self, sde, score, x, ts, generator, callback):
        flow = ProbabilityFlow(sde, score)
        ends = ts[[0, -1]]  # T, t_min; torchdiffeq flips the direction itself
        if self.adaptive:
            accepted = []  # one entry per accepted step (a Python list: no host sync)
            x_out = integrate(flow, x, ends, self.method, rtol=self.rtol, atol=self.atol,
                              max_num_steps=self.max_num_steps or self.nfe,
                              callback_accept_step=lambda t0, y0, dt: accepted.append(1))
            steps = len(accepted)  # adaptive steps do not lie on `ts`: the callback fires once, at the end
        else:
            started = []

            def step_started(t0, y0, dt):
                # torchdiffeq calls this before every step, with the state after the previous one
                if callback is not None and started:
                    callback(len(started) - 1, ts[len(started)], y0)
                started.append(1)

            x_out = integrate(flow, x, ends, self.method, grid=ts, callback_step=step_started)
            steps = ts.numel() - 1
        if callback is not None:
            callback(ts.numel() - 2, ts[-1], x_out)
        return x_out, steps
