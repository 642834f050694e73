"""Reverse-time samplers behind one interface (see `base.Sampler` and `base.GridSampler`).

`SAMPLERS` maps a name to its class: adding a sampler is one module (a `GridSampler` with one
`step`, or a `Sampler` with its own `solve`), one line here and one YAML file in `conf/sampler/`.
`sample(...)` is the one-call convenience.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validation import check_choice
from .base import CountingScore, GridSampler, SampleResult, Sampler
from .adaptive_sde import AdaptiveSDE
from .ancestral import Ancestral
from .annealed_langevin import AnnealedLangevin
from .ddim import DDIM
from .deis import DEIS, IPNDM
from .dpm_solver import DPMSolverPlusPlus2M, DPMSolverPlusPlus3M, DPMSolverSinglestep
from .euler_maruyama import EulerMaruyama
from .heun import Heun
from .langevin import LangevinCorrector, LangevinSampler, langevin_correct
from .pc import PredictorCorrector
from .pf_ode import ProbabilityFlowODE
from .reverse_diffusion import ReverseDiffusion
from .unipc import UniPC
from .grids import GRIDS, time_grid

#: name -> sampler class
SAMPLERS = {
    EulerMaruyama.name: EulerMaruyama,
    ProbabilityFlowODE.name: ProbabilityFlowODE,
    Heun.name: Heun,
    DPMSolverPlusPlus2M.name: DPMSolverPlusPlus2M,
    DPMSolverPlusPlus3M.name: DPMSolverPlusPlus3M,
    DPMSolverSinglestep.name: DPMSolverSinglestep,
    UniPC.name: UniPC,
    DEIS.name: DEIS,
    IPNDM.name: IPNDM,
    DDIM.name: DDIM,
    ReverseDiffusion.name: ReverseDiffusion,
    Ancestral.name: Ancestral,
    LangevinSampler.name: LangevinSampler,
    PredictorCorrector.name: PredictorCorrector,
    AnnealedLangevin.name: AnnealedLangevin,
    AdaptiveSDE.name: AdaptiveSDE,
}

#: name -> corrector class (the `corrector` of `pc`)
CORRECTORS = {"langevin": LangevinCorrector}


def build_sampler(name: str, **options) -> Sampler:
    """Construct a sampler by name with its options (e.g. `nfe=50`)."""
    check_choice("sampler", name, SAMPLERS)
    return SAMPLERS[name](**options)


def sample(
    sde,
    score_fn,
    shape: Optional[Sequence[int]] = None,
    sampler: str = "euler_maruyama",
    nfe: int = 100,
    generator: Optional[torch.Generator] = None,
    x_T: Optional[torch.Tensor] = None,
    callback=None,
    device=None,
    dtype=None,
    **options,
) -> SampleResult:
    """Sample with a named sampler in one call.

    Args:
        sde: the forward SDE. score_fn: `score_fn(x, t)` -> tensor like x.
        shape: (B, *event), or give `x_T`. sampler: a key of `SAMPLERS`. nfe: evaluation budget.
        generator: randomness. callback: `callback(i, t_next, x)` after each step.
        device, dtype: of the prior sample. **options: the sampler's own options (e.g.
            `check_finite=True`).

    Returns:
        `SampleResult(samples, nfe, num_steps, num_nonfinite)`.
    """
    return build_sampler(sampler, nfe=nfe, **options)(
        sde, score_fn, shape=shape, x_T=x_T, generator=generator, callback=callback, device=device, dtype=dtype
    )


__all__ = [
    "Sampler",
    "GridSampler",
    "SampleResult",
    "CountingScore",
    "SAMPLERS",
    "build_sampler",
    "sample",
    "time_grid",
    "GRIDS",
    "langevin_correct",
    "LangevinCorrector",
    "CORRECTORS",
]
