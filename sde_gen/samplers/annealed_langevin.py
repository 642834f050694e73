"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of
the Data Distribution", Algorithm 1), the NCSN sampler:

    for i = 1..L:  alpha_i = epsilon sigma_i^2 / sigma_L^2
                   repeat T times:  y <- y + alpha_i / 2 score_{sigma_i}(y) + sqrt(alpha_i) z

over geometric noise levels sigma_1 > ... > sigma_L of the data perturbed by N(0, sigma^2 I).

For any affine SDE, x_t = a(t) (x_0 + sigma(t) z) with the equivalent noise level
sigma(t) = s(t) / a(t) = exp(-lambda(t)), so y = x / a(t) is exactly NCSN's sigma(t)-perturbed data
and its score is a(t) score_t(a(t) y). The levels are equally spaced in log sigma = -lambda between
sigma(T) and sigma(t_min), placed at their times by `SDE.time_at_half_log_snr` (the "log_snr" grid);
for the VE SDE they are `VESDE.noise_levels` and y = x. So the algorithm runs unchanged on every SDE.

The NFE budget buys L = (nfe - denoise) // T levels (L >= 2). epsilon defaults to NCSN's ratio
epsilon / sigma_L^2 = 2e-5 / 0.01^2 = 0.2 carried to this SDE's sigma_L. The final Tweedie denoising
at sigma_L (Jolicoeur-Martineau et al. 2020 showed it matters for NCSN) is the base class's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._validation import check_positive, check_positive_int
from .base import Sampler
from .grids import time_grid

#: NCSN's epsilon / sigma_L^2 (Song & Ermon 2019: epsilon = 2e-5, sigma_L = 0.01)
NCSN_STEP_RATIO = 0.2


@dataclass(eq=False, kw_only=True)
class AnnealedLangevin(Sampler):
    """NCSN annealed Langevin dynamics over geometric noise levels; every SDE.

    Args:
        steps_per_level: T, Langevin steps per noise level (score evaluations per level).
        epsilon: alpha_L, the step size at the smallest level sigma_L (None: 0.2 sigma_L^2).
        (and the `Sampler` options; the grid is always "log_snr", geometric levels, and a "step"
        is one noise level: num_steps = L)
    """

    name = "annealed_langevin"
    min_steps = 2  # sigma_1 and sigma_L
    stochastic = True
    order = 1.0
    default_grid = "log_snr"

    steps_per_level: int = 1
    epsilon: Optional[float] = None

    def __post_init__(self):
        if self.grid not in (None, "log_snr"):
            raise ValueError(f"grid must be one of ['log_snr'] for annealed_langevin (geometric noise levels); got {self.grid!r}")
        check_positive_int("steps_per_level", self.steps_per_level)
        self.epsilon = None if self.epsilon is None else check_positive("epsilon", self.epsilon)
        super().__post_init__()

    @property
    def evals_per_step(self) -> int:
        return self.steps_per_level

    def time_grid(self, sde, device=None) -> torch.Tensor:
        """Times of the L levels, (L,) float64, from T to t_min, equally spaced in log sigma."""
        return time_grid(sde, self.num_steps - 1, "log_snr", t_min=self.t_min, device=device)

    def solve(self, sde, score, x, ts, generator, callback):
        B = x.shape[0]
        a_all, s_all = sde.marginal_coeffs(ts)  # float64 (L,)
        sigmas = s_all / a_all
        eps = NCSN_STEP_RATIO * sigmas[-1] ** 2 if self.epsilon is None else torch.as_tensor(self.epsilon, dtype=ts.dtype, device=ts.device)
        alphas = (eps * (sigmas / sigmas[-1]) ** 2).to(x.dtype)  # alpha_i = epsilon sigma_i^2 / sigma_L^2
        a_x = a_all.to(x.dtype)
        y = x / a_x[0]  # NCSN's sigma-perturbed data: y = x / a(t)
        for i in range(ts.numel()):
            t = ts[i].expand(B)
            a_i, alpha = a_x[i], alphas[i]
            for _ in range(self.steps_per_level):
                grad_y = a_i * score(a_i * y, t)  # the score of the sigma_i-perturbed data at y
                z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                y = y + 0.5 * alpha * grad_y + alpha.sqrt() * z  # Alg. 1, line 6
            if callback is not None:
                callback(i, ts[i], a_i * y)
        return a_x[-1] * y, ts.numel()
