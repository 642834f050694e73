"""The sampler template, in two tiers (torchdiffeq's design, Chen et al. 2018).

`Sampler` owns everything a sampler does around its solver: the NFE budget (turned into a step
count, so samplers are compared at equal cost), the prior sample, `torch.no_grad`, the generator,
counting score evaluations, the check of the score function's first output, the optional tracking
of non-finite rows, and the final denoising step. A concrete sampler writes `solve`, which returns
the state at t_min and the number of steps it took.

`GridSampler` owns the loop over a time grid T = t_0 > ... > t_N = t_min and the callback; a
concrete sampler writes one `step` (and, for coefficient tables or multistep memory, `init_state`).

Contract: `score_fn(x, t)` returns a tensor like `x` (same shape, dtype and device; checked on the
first call), with `t` of shape (B,) in the dtype of `x`.

Final denoising (Tweedie's formula, Efron 2011; used by Song et al. 2021, Jolicoeur-Martineau et
al. 2021): x_0 = (x + s(t)^2 score(x, t)) / a(t) at t = t_min, one extra score evaluation that removes
the residual noise of level s(t_min).

Conditioning hook (inverse problems, `sde_gen.inverse`): a grid sampler given `condition=...` calls
`condition.wrap_score` once (so the NFE counts the wrapped calls), `condition.start` on x_T,
`condition.after_step` after every solver step, follows `condition.path` (RePaint's jumps back up the
grid) and calls `condition.finish` after the final denoising. Without a condition nothing changes.
A condition whose wrapped score costs more than one network pass per call (Jacobian products:
`DPS`, `TweedieMoment`) declares `evals_per_call`; every call is counted at that cost, and the budget
buys correspondingly fewer steps. A condition that jumps back up the grid (`jumps_back`, RePaint)
is refused by multistep samplers, whose memory of earlier predictions a jump would make stale.

A sampler is a keyword dataclass: a subclass declares only its own options as fields, checks them in
`__post_init__` and then calls `super().__post_init__()`, which checks the base options and the budget.
"""
import logging
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..ode import check_score_output
from ..parameterization import x0_from_score
from ..sdes import SDE
from .grids import GRIDS, time_grid

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]

__all__ = ["Sampler", "GridSampler", "SampleResult", "CountingScore", "check_bool"]

log = logging.getLogger(__name__)


def check_bool(name: str, value) -> bool:
    """`value` if it is a bool, else a ValueError naming `name`."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False); got {value!r}")
    return value


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes:
        samples: (B, *event) final samples.
        nfe: number of score-function calls actually made.
        num_steps: number of solver steps taken.
        num_nonfinite: with `check_finite=True`, how many rows of x_T, of the states the score was
            evaluated at, of the score outputs or of the samples were non-finite (inf or NaN);
            None when the sampler did not check.
    """

    samples: torch.Tensor
    nfe: int
    num_steps: int
    num_nonfinite: Optional[int] = None


class CountingScore:
    """Wraps `score_fn`: counts calls (a Python int), casts `t` to x's dtype, checks the first output.

    Args:
        score_fn: `score_fn(x, t)` -> tensor like x.
        cost: network passes one call costs (forward and Jacobian-product passes; 1 for a plain score).
        track_nonfinite: also OR, per row, whether the input x or the output score is non-finite
            into `nonfinite` ((B,) bool on x's device): device work only, no host sync.
    """

    def __init__(self, score_fn: ScoreFn, track_nonfinite: bool = False, cost: int = 1):
        self.score_fn = score_fn
        self.cost = check_positive_int("cost", cost)
        self.calls = 0
        self.track_nonfinite = track_nonfinite
        self.nonfinite: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += self.cost
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.score_fn(x, t.to(x.dtype))
        if self.calls == self.cost:  # shapes, dtypes and devices do not change during a run: check once
            check_score_output(out, x)
        if self.track_nonfinite:
            self.flag_nonfinite(x)
            self.flag_nonfinite(out)
        return out

    def flag_nonfinite(self, x: torch.Tensor) -> None:
        """OR the rows of `x` (B, *event) that hold an inf or NaN into `nonfinite`."""
        bad = ~torch.isfinite(x).flatten(1).all(1)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad


@dataclass(eq=False)
class Sampler(ABC):
    """Base class of every sampler.

    Args:
        nfe: budget of score evaluations; the step count is derived from it (`num_steps`).
        denoise: apply the final Tweedie denoising step at t_min (costs one evaluation).
        grid: time grid "uniform", "log_snr" or "karras" (None: the sampler's `default_grid`).
        rho: Karras grid exponent.
        t_min: last time of the grid (None: `sde.eps`).
        check_finite: track rows that become non-finite (device-side, one host read after the
            loop) and report their number in `SampleResult.num_nonfinite` and a logged warning.
        condition: a conditioning method of `sde_gen.inverse` (`Replacement`, `RePaint`, `DPS`,
            `ExactConditional`), grid samplers only; None: unconditional sampling.

    Class facts a subclass sets (per-instance facts are properties of the subclass):
        name: registry key.
        evals_per_step: score evaluations per step (e.g. 2 for Heun).
        min_steps: the fewest steps the sampler can take.
        stochastic: whether the sampler injects noise.
        order: convergence order (strong order for ODE solvers, weak order for SDE solvers).
        default_grid: the grid used when `grid` is None.
        supports_condition: whether the sampler runs the conditioning hook (grid samplers).
        multistep: whether a step uses predictions of earlier steps (memory a jump back invalidates).
    """

    name: ClassVar[str] = ""
    evals_per_step: ClassVar[int] = 1
    min_steps: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    order: ClassVar[float] = 1.0
    default_grid: ClassVar[str] = "uniform"
    supports_condition: ClassVar[bool] = False
    multistep: ClassVar[bool] = False

    nfe: int = 100
    _: KW_ONLY
    denoise: bool = True
    grid: Optional[str] = None
    rho: float = 7.0
    t_min: Optional[float] = None
    check_finite: bool = False
    condition: Optional[Any] = None

    def __post_init__(self):
        self.nfe = check_positive_int("nfe", self.nfe)
        check_bool("denoise", self.denoise)
        self.grid = self.default_grid if self.grid is None else check_choice("grid", self.grid, GRIDS)
        self.rho = check_positive("rho", self.rho)
        self.t_min = None if self.t_min is None else check_positive("t_min", self.t_min)
        check_bool("check_finite", self.check_finite)
        self._check_condition()
        if self.num_steps < self.min_steps:
            need = 1
            while self._grid_steps(need - self.denoise) < self.min_steps:
                need += 1
            need *= self._call_cost
            raise ValueError(f"nfe must be >= {need} for sampler {self.name!r} (denoise={self.denoise}); got {self.nfe}")

    def _check_condition(self) -> None:
        """`condition` is None or a conditioning method, and this sampler runs the hook."""
        if self.condition is None:
            return
        if not all(callable(getattr(self.condition, hook, None)) for hook in ("wrap_score", "start", "after_step", "finish")):
            raise ValueError("condition must be a conditioning method of sde_gen.inverse (Replacement, RePaint, DPS, "
                             f"ExactConditional; see build_condition) or None; got {self.condition!r}")
        if not self.supports_condition:
            from . import SAMPLERS  # the registry imports this module: look it up when needed

            allowed = ", ".join(name for name, cls in SAMPLERS.items() if cls.supports_condition)
            raise ValueError(f"condition works with the grid samplers (allowed: {allowed}); got sampler {self.name!r}")
        if getattr(self.condition, "jumps_back", False) and self.multistep:
            from . import SAMPLERS

            allowed = ", ".join(name for name, cls in SAMPLERS.items() if cls.supports_condition and cls.multistep is not True)
            raise ValueError(f"{type(self.condition).__name__} jumps back up the grid, which leaves the memory of the "
                             f"multistep sampler {self.name!r} stale; use a one-step grid sampler (allowed: {allowed}, "
                             "pc with a one-step predictor)")

    @property
    def _call_cost(self) -> int:
        """Network passes one call of the (wrapped) score costs: the condition's `evals_per_call`, else 1."""
        return 1 if self.condition is None else int(getattr(self.condition, "evals_per_call", 1))

    # ---- budget and grid ----
    def steps_for(self, evals: int) -> int:
        """The number of steps that `evals` score evaluations buy (override for other rules)."""
        return evals // self.evals_per_step

    @property
    def num_steps(self) -> int:
        """Steps the budget buys once the denoising evaluation is set aside (an upper bound for
        samplers that choose their own steps)."""
        return self._grid_steps(self.nfe // self._call_cost - self.denoise)

    def _grid_steps(self, evals: int) -> int:
        """Grid steps `evals` buy: `steps_for`, divided among a condition's passes (RePaint)."""
        steps = self.steps_for(evals)
        return steps if self.condition is None else self.condition.grid_steps(steps)

    def time_grid(self, sde: SDE, device=None) -> torch.Tensor:
        """The float64 time grid (num_steps + 1,) from T down to t_min, on `device`."""
        return time_grid(sde, self.num_steps, self.grid, t_min=self.t_min, rho=self.rho, device=device)

    def check_sde(self, sde: SDE) -> None:
        """Raise a clear error if this sampler cannot work with `sde` (default: all SDEs)."""

    # ---- the run ----
    @abstractmethod
    def solve(
        self,
        sde: SDE,
        score: CountingScore,
        x: torch.Tensor,
        ts: torch.Tensor,
        generator: Optional[torch.Generator],
        callback: Optional[Callback],
    ) -> Tuple[torch.Tensor, int]:
        """Carry x from ts[0] = T to ts[-1] = t_min.

        Args:
            sde: the forward SDE.
            score: the counting score function.
            x: (B, *event) state at T.
            ts: the float64 grid from `time_grid`, on x's device.
            generator: randomness for stochastic samplers.
            callback: `callback(i, t_next, x)` after every step, or None.

        Returns:
            `(x, steps_taken)`: the state at t_min and the number of steps taken.
        """

    def __call__(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        shape: Optional[Sequence[int]] = None,
        x_T: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[Callback] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
    ) -> SampleResult:
        """Draw samples.

        Args:
            sde: the forward SDE.
            score_fn: `score_fn(x, t)` -> tensor like x (shape, dtype and device).
            shape: (B, *event) when starting from the prior; or give `x_T`.
            x_T: starting point at t = T (overrides `shape`).
            generator: randomness for the prior and the steps (its device is used by default).
            callback: `callback(i, t_next, x)` after every step (trajectories, progress bars).
            device, dtype: of the prior sample when `x_T` is None.

        Returns:
            A `SampleResult` with the samples, the NFE spent, the steps taken and, with
            `check_finite`, the number of non-finite rows.
        """
        self.check_sde(sde)
        if (shape is None) == (x_T is None):
            raise ValueError("give exactly one of shape (to start from the prior) or x_T")
        cond = self.condition
        score = CountingScore(score_fn if cond is None else cond.wrap_score(sde, score_fn),
                              track_nonfinite=self.check_finite, cost=self._call_cost)
        with torch.no_grad():
            x = sde.prior_sample(shape, generator, device, dtype) if x_T is None else x_T
            ts = self.time_grid(sde, device=x.device)
            if cond is not None:
                x = cond.start(sde, x, ts[0].expand(x.shape[0]), generator)
            if self.check_finite:
                score.flag_nonfinite(x)
            x, steps = self.solve(sde, score, x, ts, generator, callback)
            if self.denoise:
                t_last = ts[-1].expand(x.shape[0])
                x = x0_from_score(sde, x, t_last, score(x, t_last))
            if cond is not None:
                x = cond.finish(sde, x)
        num_nonfinite = None
        if self.check_finite:
            score.flag_nonfinite(x)
            num_nonfinite = int(score.nonfinite.sum())  # the one host read, after the loop
            if num_nonfinite:
                rows = score.nonfinite.nonzero().flatten()[:10].tolist()
                log.warning("%s: %d of %d samples became non-finite (inf or NaN); first rows: %s",
                            type(self).__name__, num_nonfinite, x.shape[0], rows)
        return SampleResult(samples=x, nfe=score.calls, num_steps=steps, num_nonfinite=num_nonfinite)


@dataclass(eq=False)
class GridSampler(Sampler):
    """A sampler that steps along its time grid: the loop is here, a subclass writes `step`."""

    supports_condition: ClassVar[bool] = True

    def init_state(self, sde: SDE, x: torch.Tensor, ts: torch.Tensor, evals: int) -> Dict[str, Any]:
        """Per-run state: coefficient tables over the grid, multistep memory (default: empty).

        Args:
            sde: the forward SDE. x: the state at ts[0].
            ts: the float64 grid (N + 1,).
            evals: the score evaluations the N steps may spend (at least N * evals_per_step - 1).
        """
        return {}

    @abstractmethod
    def step(
        self,
        sde: SDE,
        score: CountingScore,
        x: torch.Tensor,
        i: int,
        t: torch.Tensor,
        t_next: torch.Tensor,
        generator: Optional[torch.Generator],
        state: Dict[str, Any],
    ) -> torch.Tensor:
        """Step i of the grid, from t = ts[i] to t_next = ts[i + 1].

        Args:
            sde: the forward SDE.
            score: the counting score function.
            x: current state (B, *event).
            i: the step index (into the tables of `init_state`).
            t, t_next: (B,) float64 times on x's device (for coefficient arithmetic; `score`
                casts t to x's dtype itself).
            generator: randomness for stochastic steps.
            state: the dict from `init_state`.

        Returns:
            x at t_next.
        """

    def solve(self, sde, score, x, ts, generator, callback):
        N, B = ts.numel() - 1, x.shape[0]
        state = self.init_state(sde, x, ts, evals=self.nfe // self._call_cost - self.denoise)
        cond = self.condition
        if cond is None:
            for i in range(N):
                x = self.step(sde, score, x, i, ts[i].expand(B), ts[i + 1].expand(B), generator, state)
                if callback is not None:
                    callback(i, ts[i + 1], x)
            return x, N
        steps = 0
        for i, j in cond.path(N):  # j = i + 1: a solver step; j < i: a jump back up the grid
            if j < i:
                x = cond.jump(sde, x, ts[i].expand(B), ts[j].expand(B), generator)
                continue
            x = self.step(sde, score, x, i, ts[i].expand(B), ts[j].expand(B), generator, state)
            x = cond.after_step(sde, x, ts[j].expand(B), generator)
            steps += 1
            if callback is not None:
                callback(i, ts[j], x)
        return x, steps
