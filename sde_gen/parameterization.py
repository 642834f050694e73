"""Conversions from the score to the two other outputs of a denoiser at (x_t, t), in one place.

With x_t = a(t) x_0 + s(t) z and the score grad log p_t(x_t):
    noise prediction   eps_hat = -s(t) score                              (Ho et al. 2020)
    data prediction    x0_hat  = (x_t + s(t)^2 score) / a(t)              (Tweedie's formula;
                                                                           Efron 2011, Kadkhodaie & Simoncelli 2021)
Networks trained by `losses.dsm_loss` predict -eps and are divided by s(t) to give a score
(Song et al. 2021, App. H); samplers such as DDIM and DPM-Solver++ work with eps or x0.
All functions take `t` of shape (B,) and return tensors like `x`.
"""
from __future__ import annotations

import torch

from .sdes import SDE
from .utils import append_dims


def _coeffs(sde: SDE, t: torch.Tensor, x: torch.Tensor):
    a, s = sde.marginal_coeffs(t)
    return append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)


def eps_from_score(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """eps_hat = -s(t) score."""
    _, s = _coeffs(sde, t, x)
    return -s * score


def x0_from_score(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Tweedie: E[x_0 | x_t] = (x_t + s(t)^2 score) / a(t)."""
    a, s = _coeffs(sde, t, x)
    return (x + s ** 2 * score) / a
