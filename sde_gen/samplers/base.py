"""The sampler base class: it owns the time grid, the loop, `torch.no_grad`, the generator,
counting score evaluations, the callback and the final denoising step; a concrete sampler
writes one `step` (torchdiffeq's design, Chen et al. 2018).

Contract: `score_fn(x, t)` returns a tensor like `x`, with `t` of shape (B,) in the dtype of `x`.
A sampler is configured once (`nfe`, grid, options) and then called with an SDE, a score function
and a shape or a starting `x_T`. Every sampler turns its NFE budget into a step count, so samplers
are compared at equal cost, and reports the NFE it actually spent.

Final denoising (Tweedie's formula, Efron 2011; used by Song et al. 2021, Jolicoeur-Martineau et
al. 2021): x_0 = (x + s(t)^2 score(x, t)) / a(t) at t = t_min, one extra score evaluation that removes
the residual noise of level s(t_min).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..parameterization import x0_from_score
from ..sdes import SDE
from .grids import GRIDS, time_grid

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]

__all__ = ["Sampler", "SampleResult", "CountingScore"]


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes:
        samples: (B, *event) final samples.
        nfe: number of score-function calls actually made.
        num_steps: number of solver steps taken.
    """

    samples: torch.Tensor
    nfe: int
    num_steps: int


class CountingScore:
    """Wraps `score_fn`, counting calls (a Python int: no host sync) and casting `t` to `x`'s dtype."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.score_fn(x, t.to(x.dtype))


class Sampler(ABC):
    """Base class of every sampler.

    Args:
        nfe: budget of score evaluations; the step count is derived from it.
        denoise: apply the final Tweedie denoising step at t_min (costs one evaluation).
        grid: time grid "uniform", "log_snr" or "karras" (None: the sampler's default).
        rho: Karras grid exponent.
        t_min: last time of the grid (None: `sde.eps`).

    Class attributes a subclass sets:
        name: registry key.
        evals_per_step: score evaluations per step (e.g. 2 for Heun).
        stochastic: whether the sampler injects noise.
        order: convergence order (strong order for ODE solvers, weak order for SDE solvers).
        default_grid: the grid used when `grid` is None.
        default_denoise: the default of `denoise` when a config leaves it out.
    """

    name: ClassVar[str] = ""
    evals_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    order: ClassVar[float] = 1.0
    default_grid: ClassVar[str] = "uniform"

    def __init__(
        self,
        nfe: int = 100,
        denoise: bool = True,
        grid: Optional[str] = None,
        rho: float = 7.0,
        t_min: Optional[float] = None,
    ):
        self.nfe = check_positive_int("nfe", nfe)
        self.denoise = bool(denoise)
        self.grid = self.default_grid if grid is None else check_choice("grid", grid, GRIDS)
        self.rho = check_positive("rho", rho)
        self.t_min = None if t_min is None else check_positive("t_min", t_min)
        self.num_steps = self.steps_for_budget(self.nfe)

    # ---- budget and grid ----
    def steps_for_budget(self, nfe: int) -> int:
        """The number of steps that fits `nfe` evaluations (after the denoising evaluation)."""
        budget = nfe - (1 if self.denoise else 0)
        steps = budget // self.evals_per_step
        if steps < 1:
            need = self.evals_per_step + (1 if self.denoise else 0)
            raise ValueError(f"nfe must be >= {need} for sampler {self.name!r} (denoise={self.denoise}); got {nfe}")
        return steps

    def time_grid(self, sde: SDE, device=None) -> torch.Tensor:
        """The float64 time grid (num_steps + 1,) from T down to t_min, on `device`."""
        return time_grid(sde, self.num_steps, self.grid, t_min=self.t_min, rho=self.rho, device=device)

    def check_sde(self, sde: SDE) -> None:
        """Raise a clear error if this sampler cannot work with `sde` (default: all SDEs)."""

    # ---- the loop ----
    def init_state(self, sde: SDE, x: torch.Tensor, ts: torch.Tensor) -> Dict[str, Any]:
        """Per-run state for multistep methods (default: empty)."""
        return {}

    @abstractmethod
    def step(
        self,
        sde: SDE,
        score: CountingScore,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        generator: Optional[torch.Generator],
        state: Dict[str, Any],
    ) -> torch.Tensor:
        """One step from time t to t_next < t.

        Args:
            sde: the forward SDE.
            score: the counting score function.
            x: current state (B, *event).
            t, t_next: (B,) float64 times on x's device (use them for coefficient arithmetic;
                `score` casts t to x's dtype itself).
            generator: randomness for stochastic steps.
            state: the dict from `init_state`, for multistep methods.

        Returns:
            x at t_next.
        """

    def solve(
        self,
        sde: SDE,
        score: CountingScore,
        x: torch.Tensor,
        ts: torch.Tensor,
        generator: Optional[torch.Generator],
        callback: Optional[Callback],
    ) -> torch.Tensor:
        """Run the steps over the grid `ts` (override for solvers with their own loop)."""
        state = self.init_state(sde, x, ts)
        B = x.shape[0]
        for i in range(ts.numel() - 1):
            x = self.step(sde, score, x, ts[i].expand(B), ts[i + 1].expand(B), generator, state)
            if callback is not None:
                callback(i, ts[i + 1], x)
        return x

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
            score_fn: `score_fn(x, t)` -> tensor like x.
            shape: (B, *event) when starting from the prior; or give `x_T`.
            x_T: starting point at t = T (overrides `shape`).
            generator: randomness for the prior and the steps (its device is used by default).
            callback: `callback(i, t_next, x)` after every step (trajectories, progress bars).
            device, dtype: of the prior sample when `x_T` is None.

        Returns:
            A `SampleResult` with the samples, the NFE spent and the step count.
        """
        self.check_sde(sde)
        if (shape is None) == (x_T is None):
            raise ValueError("give exactly one of shape (to start from the prior) or x_T")
        score = CountingScore(score_fn)
        with torch.no_grad():
            x = sde.prior_sample(shape, generator, device, dtype) if x_T is None else x_T
            ts = self.time_grid(sde, device=x.device)
            x = self.solve(sde, score, x, ts, generator, callback)
            if self.denoise:
                t_last = ts[-1].expand(x.shape[0])
                x = x0_from_score(sde, x, t_last, score(x, t_last))
        return SampleResult(samples=x, nfe=score.calls, num_steps=self.num_steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nfe={self.nfe}, steps={self.num_steps}, grid={self.grid!r}, denoise={self.denoise})"
