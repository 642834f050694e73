"""Divergence of the probability-flow drift: exact (D vector-Jacobian products) or the
Skilling-Hutchinson estimator E_v[v^T J v], E[v v^T] = I (Skilling 1989; Hutchinson 1990;
FFJORD, Grathwohl et al. 2019, eq. 7).

The drift is k1 x + k2 score (Song et al. 2021, eq. 13), so its divergence is D k1 + k2 tr(d score / dx):
only the score goes through autograd.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..sdes import SDE
from ..sdes.base import ScoreFn
from ..utils import append_dims, batch_sum, event_numel

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def draw_probes(
    x: torch.Tensor, num_probes: int, probe: str = "rademacher", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Hutchinson probes with E[v v^T] = I, shape (num_probes, B, *event), like `x`'s dtype/device.

    Args:
        x: (B, *event), gives shape, dtype and device.
        num_probes: M.
        probe: "rademacher" (+-1 with equal probability) or "gaussian" (standard normal).
        generator: source of randomness.
    """
    shape = (num_probes,) + tuple(x.shape)
    if probe == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return (2 * bits - 1).to(x.dtype)
    return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)


#: elements of the basis block (chunk x B x D) pushed through one batched backward pass by the
#: exact divergence: bigger blocks mean fewer passes but intermediates that fall out of cache on a CPU
#: (measured: one 64 x 512 x 64 block is ~4x slower than eight of 8 x 512 x 64)
VJP_BLOCK_ELEMENTS = 2 ** 18


def score_and_divergence(
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    probes: Optional[torch.Tensor] = None,
    vjp_chunk_size: Optional[int] = None,
):
    """The score at (x, t) and the trace of its Jacobian (exact or Hutchinson), detached.

    Only the score goes through autograd: the probability-flow drift is c1(t) x + c2(t) score in
    every time variable used here, so its divergence is D c1 + c2 tr(d score / dx), the linear
    part added analytically by the callers.

    Args:
        score_fn: `score_fn(x, t)` -> tensor like `x`.
        x: (B, *event). t: (B,) in `x`'s dtype.
        probes: None for the exact trace; else (M, B, *event) Hutchinson probes.
        vjp_chunk_size: exact trace only: basis vectors per batched backward pass
            (None: as many as fit in `VJP_BLOCK_ELEMENTS`; D: all in one pass).

    Returns:
        `(score, trace)`: score like `x`; trace (B,) for the exact trace, (M, B) of
        v_m^T (d score / dx) v_m per probe else.

    The score is evaluated once, under `torch.enable_grad()` (callers often sit in `no_grad`),
    differentiated with respect to a detached copy of `x` only; `retain_graph` is set only between
    blocks of the same evaluation and nothing uses `create_graph`, so no graph survives the call.
    No host synchronisation (the block loop depends on shapes only).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = score_fn(x_in, t)
        B, D = x.shape[0], event_numel(x)
        if probes is None:
            # tr J = sum_i (e_i^T J)_i, the rows e_i^T J computed in blocks of basis vectors
            chunk = vjp_chunk_size or max(1, VJP_BLOCK_ELEMENTS // max(1, B * D))
            chunk = min(chunk, D)
            eye = torch.eye(D, device=x.device, dtype=x.dtype)
            trace = x.new_zeros(B)
            for lo in range(0, D, chunk):
                e = eye[lo : lo + chunk]  # (c, D)
                c, more = e.shape[0], lo + chunk < D
                basis = e[:, None, :].expand(c, B, D).reshape((c,) + tuple(x.shape))
                if c == 1:
                    (rows,) = torch.autograd.grad(score, x_in, basis[0], retain_graph=more)
                    rows = rows[None]
                else:
                    (rows,) = torch.autograd.grad(score, x_in, basis, is_grads_batched=True, retain_graph=more)
                trace = trace + (rows.reshape(c, B, D) * e[:, None, :]).sum((0, 2))
        elif probes.shape[0] == 1:
            (vjp,) = torch.autograd.grad(score, x_in, probes[0])
            trace = batch_sum(vjp * probes[0])[None]
        else:
            (vjp,) = torch.autograd.grad(score, x_in, probes, is_grads_batched=True)
            trace = (vjp * probes).flatten(2).sum(2)
    return score.detach(), trace.detach()


def drift_and_divergence(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    probes: Optional[torch.Tensor] = None,
    vjp_chunk_size: Optional[int] = None,
):
    """The probability-flow drift dx/dt and its divergence at (x, t), detached.

    drift = k1 x + k2 score, div = D k1 + k2 tr(d score / dx) with (k1, k2) =
    `sde.probability_flow_coeffs(t)` = (f(t), -1/2 g(t)^2): the linear part's divergence is exact,
    only the score's Jacobian trace goes through autograd (for Hutchinson, v^T J_score v per probe;
    the estimate stays unbiased and the linear part adds no variance).

    Args:
        sde: the SDE. score_fn: `score_fn(x, t)` -> tensor like `x`.
        x: (B, *event). t: (B,) in `x`'s dtype.
        probes: None for the exact divergence; else (M, B, *event) Hutchinson probes.
        vjp_chunk_size: see `score_and_divergence`.

    Returns:
        `(drift, div)`: drift like `x`; div (B,) for the exact divergence, (M, B) per probe else.
    """
    score, trace = score_and_divergence(score_fn, x, t, probes, vjp_chunk_size)
    k1, k2 = (k.to(x.dtype) for k in sde.probability_flow_coeffs(t))
    drift = append_dims(k1, x.ndim) * x + append_dims(k2, x.ndim) * score
    return drift, event_numel(x) * k1 + k2 * trace
