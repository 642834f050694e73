"""Predictor-corrector sampling (Song et al. 2021, Sec. 4.2, Algorithms 2 (VE) and 3 (VP)).

Each grid step t -> t_next < t is one step of a *predictor* (any `GridSampler`: reverse_diffusion,
euler_maruyama, ancestral, or a deterministic ODE step) followed by M steps of a *corrector* at
t_next (Langevin MCMC with the signal-to-noise-ratio step size, Algorithms 4-5), which pulls the
predicted samples back towards p_{t_next}:

    for i = N-1, ..., 0:   x_i <- predictor(x_{i+1}, t_{i+1} -> t_i)
                           repeat M times:  x_i <- langevin(x_i, t_i)

Both are objects, given to the constructor (nested `_target_` nodes in `conf/sampler/pc.yaml`); the
defaults are Algorithm 2-3's: the reverse-diffusion predictor and one Langevin step at snr 0.16.
The predictor contributes its `step` (and `init_state`, for multistep methods); its own budget and
grid options are not used: the PC sampler's are. Evaluations per step = the predictor's + M, and
the NFE budget buys steps at that price.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import GridSampler
from .langevin import LangevinCorrector
from .reverse_diffusion import ReverseDiffusion


@dataclass(eq=False, kw_only=True)
class PredictorCorrector(GridSampler):
    """A grid predictor followed, at every step, by the Langevin corrector.

    Args:
        predictor: a `GridSampler` other than a PC sampler (None: `ReverseDiffusion()`).
        corrector: a `LangevinCorrector` (None: `LangevinCorrector()`, one step at snr 0.16;
            `LangevinCorrector(num_steps=0)` turns the correction off).
        (and the `Sampler` options; `grid=None` takes the predictor's default grid)
    """

    name = "pc"

    predictor: Optional[GridSampler] = None
    corrector: Optional[LangevinCorrector] = None

    def __post_init__(self):
        if self.predictor is None:
            self.predictor = ReverseDiffusion()
        if not isinstance(self.predictor, GridSampler) or isinstance(self.predictor, PredictorCorrector):
            raise ValueError("predictor must be a one-step GridSampler object other than a PC sampler, e.g. "
                             f"ReverseDiffusion(), EulerMaruyama(), Ancestral(), DDIM(); got {self.predictor!r}")
        if self.corrector is None:
            self.corrector = LangevinCorrector()
        if not isinstance(self.corrector, LangevinCorrector):
            raise ValueError(f"corrector must be a LangevinCorrector object, e.g. LangevinCorrector(snr=0.16, "
                             f"num_steps=1); got {self.corrector!r}")
        super().__post_init__()

    @property
    def evals_per_step(self) -> int:
        return self.predictor.evals_per_step + self.corrector.num_steps

    @property
    def multistep(self) -> bool:
        return self.predictor.multistep

    @property
    def default_grid(self) -> str:
        return self.predictor.default_grid

    @property
    def order(self) -> float:
        return self.predictor.order

    @property
    def stochastic(self) -> bool:
        return self.predictor.stochastic or self.corrector.num_steps > 0

    def check_sde(self, sde) -> None:
        self.predictor.check_sde(sde)

    def init_state(self, sde, x, ts, evals):
        # the predictor's share of the evaluations: every one of its steps is a full step
        return self.predictor.init_state(sde, x, ts, (ts.numel() - 1) * self.predictor.evals_per_step)

    def step(self, sde, score, x, i, t, t_next, generator, state):
        x = self.predictor.step(sde, score, x, i, t, t_next, generator, state)
        return self.corrector(sde, score, x, t, t_next, generator)
