"""Predictor-corrector sampling (Song et al. 2021, Sec. 4.2, Algorithms 2 (VE) and 3 (VP)).

Each grid step t -> t_next < t is one step of a *predictor* (any one-step sampler of the registry:
reverse_diffusion, euler_maruyama, ancestral, or a deterministic ODE step) followed by M steps of a
*corrector* at t_next (Langevin MCMC with the signal-to-noise-ratio step size, Algorithms 4-5),
which pulls the predicted samples back towards p_{t_next}:

    for i = N-1, ..., 0:   x_i <- predictor(x_{i+1}, t_{i+1} -> t_i)
                           repeat M times:  x_i <- langevin(x_i, t_i)

The predictor is built through `SAMPLERS` and driven through its own `step` (and its `init_state`
for multistep methods), so any present or future one-step sampler composes with any corrector.
Evaluations per step = the predictor's + M, and the NFE budget buys steps at that price.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .._validation import check_choice, check_positive, check_positive_int
from .base import Sampler
from .langevin import NORMS, langevin_alpha, langevin_correct

CORRECTORS = ("langevin", "none")


def _one_step_samplers() -> Dict[str, type]:
    """Registry entries usable as predictors: those driven by the base-class loop (`step`)."""
    from . import SAMPLERS  # late import: this module is itself imported by the registry

    return {n: c for n, c in SAMPLERS.items() if c.solve is Sampler.solve and n != PredictorCorrector.name}


class PredictorCorrector(Sampler):
    """Any one-step predictor combined with the Langevin corrector (or none).

    Args:
        predictor: registry name of a one-step sampler (default "reverse_diffusion").
        corrector: "langevin" or "none".
        corrector_steps: Langevin steps M after every predictor step (ignored for "none").
        snr: signal-to-noise ratio of the corrector's step-size rule.
        norm: "batch" (default) or "sample", how the rule's norms are taken (see `langevin.py`).
        predictor_options: extra constructor options of the predictor (e.g. {"variance": "beta"}).
        **kwargs: `Sampler` options (nfe, denoise, grid, rho, t_min); `grid=None` takes the
            predictor's default grid.
    """

    name = "pc"
    stochastic = True

    def __init__(
        self,
        nfe: int = 100,
        denoise: bool = True,
        grid: Optional[str] = None,
        rho: float = 7.0,
        t_min: Optional[float] = None,
        predictor: str = "reverse_diffusion",
        corrector: str = "langevin",
        corrector_steps: int = 1,
        snr: float = 0.16,
        norm: str = "batch",
        predictor_options: Optional[Dict[str, Any]] = None,
    ):
        allowed = _one_step_samplers()
        check_choice("predictor", predictor, allowed)
        self.corrector = check_choice("corrector", corrector, CORRECTORS)
        self.corrector_steps = check_positive_int("corrector_steps", corrector_steps) if corrector != "none" else 0
        self.snr = check_positive("snr", snr)
        self.norm = check_choice("norm", norm, NORMS)
        options = dict(predictor_options or {})
        reserved = {"nfe", "denoise"} & set(options)
        if reserved:
            raise ValueError(f"predictor_options must not set {sorted(reserved)}: the PC sampler owns the budget")
        # the predictor only contributes its `step`; its own budget is irrelevant, so give it ours
        self.predictor = allowed[predictor](nfe=nfe, denoise=False, **options)
        self.evals_per_step = self.predictor.evals_per_step + self.corrector_steps
        self.default_grid = self.predictor.default_grid
        self.order = self.predictor.order
        self.stochastic = self.predictor.stochastic or self.corrector != "none"
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)

    def check_sde(self, sde) -> None:
        self.predictor.check_sde(sde)

    def init_state(self, sde, x, ts):
        return self.predictor.init_state(sde, x, ts)

    def step(self, sde, score, x, t, t_next, generator, state):
        x = self.predictor.step(sde, score, x, t, t_next, generator, state)
        if self.corrector_steps:
            alpha = langevin_alpha(sde, t, t_next)
            x = langevin_correct(score, x, t_next, alpha, self.snr, self.corrector_steps, generator, self.norm)
        return x

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", predictor={self.predictor.name!r}, corrector={self.corrector!r}, "
                f"corrector_steps={self.corrector_steps}, snr={self.snr})")
