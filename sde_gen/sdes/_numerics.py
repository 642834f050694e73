"""Numerics shared by the SDEs: schedule arithmetic in at least float32, overflow-free softplus.

A float16 / bfloat16 `t` is evaluated in float32 and rounded back (`_at_least_float32`), because
intermediate quantities such as exp(2 log(sigma_max / sigma_min)) overflow float16 although the
results themselves fit (Song et al. 2021's VE schedule, eq. 9, is the first to need it).
"""
from __future__ import annotations

import functools

import torch

#: dtypes too narrow for schedule arithmetic: evaluated in float32, rounded back at the end
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _at_least_float32(fn):
    """Evaluate a scalar time function in at least float32; return it in the caller's dtype.

    Tensor arguments in float16 / bfloat16 are upcast to float32, the result (a tensor or a
    tuple of tensors) is cast back to the promoted dtype of the arguments. float32 and float64
    arguments pass through untouched, so for them time arithmetic still follows t's dtype.
    """
    if getattr(fn, "_at_least_float32", False):
        return fn

    def up(a):
        return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION else a

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not any(a.dtype in _LOW_PRECISION for a in tensors):
            return fn(self, *args, **kwargs)
        out_dtype = functools.reduce(torch.promote_types, (a.dtype for a in tensors))
        out = fn(self, *map(up, args), **{k: up(v) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            return tuple(o.to(out_dtype) for o in out)
        return out.to(out_dtype)

    wrapper._at_least_float32 = True
    return wrapper


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without overflow and without torch's linear cut-off above x = 20."""
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))
