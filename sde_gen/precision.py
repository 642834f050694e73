"""Mixed precision and compilation of a score function, for sampling (Song et al. 2021, eq. 6 and 13).

A sampler integrates the reverse SDE / probability-flow ODE with the time grid in float64 and its
state x in the sampler's dtype; only the network evaluation s_theta(x, t) benefits from lower
precision and from compilation. `precision_score` wraps a score function so that exactly that call
runs under `torch.autocast` (bf16 / fp16 matmuls and convolutions; a float64 state enters the
network as float32, since autocast leaves float64 tensors alone) and its output comes back in x's dtype: the sampler's own arithmetic (the grid, the Euler / Heun / multistep updates, the noise)
never sees a low-precision tensor. `compile_score` wraps it in `torch.compile`; a compilation that
fails on the first call is reported once and the call is run eagerly (the sampler's state has not
moved: the failing call never returned), so the run is the eager run.

Wrappers keep the wrapped function's `batch_cost` (guided scores, `sde_gen.guidance`), so the NFE
accounting of the apps is unchanged.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

__all__ = ["PRECISIONS", "check_precision", "precision_score", "compile_score"]

log = logging.getLogger(__name__)

#: precision name -> the autocast dtype (None: no autocast; the score runs in x's dtype)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, field: str = "precision") -> Optional[torch.dtype]:
    """The autocast dtype of `precision` on `device`, or one clear ValueError.

    Raises:
        ValueError naming `field` and the allowed values for an unknown name, and for fp16 on a
        device other than CUDA (float16 autocast is a CUDA feature; the CPU has bf16).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{field} must be one of {list(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"{field}=fp16 needs a CUDA device; device is {device.type!r}; on the CPU use {field}=bf16 or fp32")
    return PRECISIONS[precision]


class _Wrapped:
    """Base of the wrappers: forwards `batch_cost` and `num_classes` of the wrapped score."""

    def __init__(self, score_fn: Callable):
        self.score_fn = score_fn

    def __getattr__(self, name):  # batch_cost, num_classes, ... of a guided score
        if name == "score_fn":
            raise AttributeError(name)
        return getattr(self.score_fn, name)


class _AutocastScore(_Wrapped):
    def __init__(self, score_fn: Callable, device_type: str, dtype: torch.dtype):
        super().__init__(score_fn)
        self.device_type, self.dtype = device_type, dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # autocast leaves float64 tensors alone: a float64 sampler's state enters the network in float32
        x_in = x.float() if x.dtype == torch.float64 else x
        t_in = t.float() if t.dtype == torch.float64 else t
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.score_fn(x_in, t_in, *args, **kwargs)
        return out.to(x.dtype)  # the sampler's state never leaves its dtype

    def __repr__(self) -> str:
        return f"autocast[{self.dtype}]({self.score_fn!r})"


def precision_score(score_fn: Callable, precision: str, device) -> Callable:
    """`score_fn` evaluated under `torch.autocast` of `precision`, its output cast back to x's dtype.

    Args:
        score_fn: `score_fn(x, t)` -> like x, t of shape (B,).
        precision: "fp32" (returned unchanged), "bf16" or "fp16" (CUDA only).
        device: the device the sampler runs on (the autocast device type).

    Returns:
        The wrapped score function (with the wrapped one's `batch_cost`, if it has one).

    Raises:
        ValueError as `check_precision`.
    """
    dtype = check_precision(precision, device)
    if dtype is None:
        return score_fn
    return _AutocastScore(score_fn, torch.device(device).type, dtype)


class _CompiledScore(_Wrapped):
    def __init__(self, score_fn: Callable, backend: str):
        super().__init__(score_fn)
        self.backend = backend
        self.compiled = torch.compile(score_fn, backend=backend)
        self.fell_back = False
        self._first = True

    def __call__(self, x, t, *args, **kwargs):
        if not self._first:
            return (self.score_fn if self.fell_back else self.compiled)(x, t, *args, **kwargs)
        self._first = False
        try:
            return self.compiled(x, t, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
            log.warning("compile: torch.compile (backend %r) failed on the first score call (%s: %s); sampling continues "
                        "eager", self.backend, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            self.fell_back = True
            return self.score_fn(x, t, *args, **kwargs)

    def __repr__(self) -> str:
        return f"compiled[{self.backend}]({self.score_fn!r})"


def compile_score(score_fn: Callable, backend: str = "inductor") -> Callable:
    """`torch.compile(score_fn, backend=backend)` with the eager fallback described above.

    Raises:
        ValueError naming `compile_backend` and the allowed backends for an unknown backend.
    """
    from torch._dynamo import list_backends

    backends = list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"compile_backend={backend!r} is not a torch.compile backend; allowed: {backends}")
    return _CompiledScore(score_fn, backend)
