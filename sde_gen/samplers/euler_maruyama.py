"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6 and App. D):

    x_{t-h} = x_t - [f(x_t, t) - g(t)^2 score(x_t, t)] h + g(t) sqrt(h) z,   z ~ N(0, I),

with h = t - t_next > 0. Weak order 1, one score evaluation per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import append_dims
from .base import GridSampler


@dataclass(eq=False, kw_only=True)
class EulerMaruyama(GridSampler):
    """Euler-Maruyama on the reverse SDE; works with every SDE of the library."""

    name = "euler_maruyama"
    evals_per_step = 1
    stochastic = True
    order = 1.0

    def step(self, sde, score, x, i, t, t_next, generator, state):
        h = append_dims((t - t_next).to(x.dtype), x.ndim)
        drift = sde.reverse_drift(x, t, score(x, t))
        g = append_dims(sde.diffusion(t).to(x.dtype), x.ndim)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x - drift * h + g * h.sqrt() * z
