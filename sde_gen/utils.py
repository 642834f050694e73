"""Shape helpers shared by every module: one broadcast rule for vectors and images.

`x` is `(B, *event)` and per-sample scalars such as `t` are `(B,)`; `append_dims` lifts a
per-sample scalar to broadcast against `x`, `batch_sum` reduces over the event dimensions.
"""
from __future__ import annotations

import math

import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to `v` until it has `ndim` dimensions.

    Args:
        v: tensor of shape `(B,)` (or any shape with at most `ndim` dimensions).
        ndim: target number of dimensions, usually `x.ndim`.

    Returns:
        A view of `v` with shape `v.shape + (1,) * (ndim - v.ndim)`.
    """
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(v.shape + (1,) * missing)


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: `(B, *event) -> (B,)`."""
    return x.flatten(1).sum(1)


def event_numel(x: torch.Tensor) -> int:
    """Number of elements of one sample of `x` (the data dimension D)."""
    return math.prod(x.shape[1:])


def as_time(t, x: torch.Tensor) -> torch.Tensor:
    """Return `t` as a `(B,)` tensor on the device and in the dtype of `x`.

    Accepts a Python number, a 0-d tensor or a `(B,)` tensor.
    """
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != x.shape[:1]:
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x; got {tuple(t.shape)}")
    return t
