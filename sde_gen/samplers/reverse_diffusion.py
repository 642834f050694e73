"""The reverse-diffusion predictor (Song et al. 2021, App. E, eq. 46-47).

Discretise the forward SDE on the grid by its exact transition x_t = a_{t|s} x_s + sqrt(v_{t|s}) z
(s = t_next < t; `SDE.transition_coeffs`), i.e. f_i(x) = (a_{t|s} - 1) x and G_i^2 = v_{t|s}, and
reverse that discrete chain the way eq. 46 reverses the SDE:

    x_s = x_t - f_i(x_t) + G_i^2 score(x_t, t) + G_i z
        = (2 - a_{t|s}) x_t + v_{t|s} score(x_t, t) + sqrt(v_{t|s}) z,      z ~ N(0, I).

For the VP SDE, a_{t|s} = sqrt(1 - beta_i) and v_{t|s} = beta_i, which is eq. 47 exactly; for the
VE SDE, a = 1 and v = sigma_t^2 - sigma_s^2 (eq. 46, the NCSN chain). Because every SDE of the library supplies its exact
transition, the predictor works for all of them. Weak order 1, one score evaluation per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import append_dims
from .base import GridSampler


@dataclass(eq=False, kw_only=True)
class ReverseDiffusion(GridSampler):
    """Reverse-diffusion predictor on the exact discrete chain of the grid; every SDE."""

    name = "reverse_diffusion"
    evals_per_step = 1
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    def step(self, sde, score, x, i, t, t_next, generator, state):
        a, v = sde.transition_coeffs(t_next, t)  # float64 (B,)
        nd = x.ndim
        a, v = append_dims(a.to(x.dtype), nd), append_dims(v.to(x.dtype), nd)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 - a) * x + v * score(x, t) + v.sqrt() * z
