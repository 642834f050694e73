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

from typing import Optional

import torch

from .._validation import check_positive, check_positive_int
from .base import Sampler
from .grids import time_grid

#: NCSN's epsilon / sigma_L^2 (Song & Ermon 2019: epsilon = 2e-5, sigma_L = 0.01)
NCSN_STEP_RATIO = 0.2


class AnnealedLangevin(Sampler):
    """NCSN annealed Langevin dynamics over geometric noise levels; every SDE.

    Args:
        steps_per_level: T, Langevin steps per noise level (score evaluations per level).
        epsilon: alpha_L, the step size at the smallest level sigma_L (None: 0.2 sigma_L^2).
        **kwargs: `Sampler` options (nfe, denoise, t_min); the grid is always "log_snr"
            (geometric levels).
    """

    name = "annealed_langevin"
    stochastic = True
    order = 1.0
    default_grid = "log_snr"

    def __init__(self, nfe: int = 100, denoise: bool = True, grid: Optional[str] = None, rho: float = 7.0,
                 t_min: Optional[float] = None, steps_per_level: int = 1, epsilon: Optional[float] = None):
        if grid not in (None, "log_snr"):
            raise ValueError(f"grid must be one of ['log_snr'] for annealed_langevin (geometric noise levels); got {grid!r}")
        self.steps_per_level = check_positive_int("steps_per_level", steps_per_level)
        self.epsilon = None if epsilon is None else check_positive("epsilon", epsilon)
        self.evals_per_step = self.steps_per_level
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)

    def steps_for_budget(self, nfe: int) -> int:
        """The number of noise levels L that fits `nfe` (at least 2: sigma_1 and sigma_L)."""
        levels = (nfe - (1 if self.denoise else 0)) // self.steps_per_level
        if levels < 2:
            need = 2 * self.steps_per_level + (1 if self.denoise else 0)
            raise ValueError(f"nfe must be >= {need} for sampler {self.name!r} (2 levels x steps_per_level="
                             f"{self.steps_per_level}, denoise={self.denoise}); got {nfe}")
        return levels

    def time_grid(self, sde, device=None) -> torch.Tensor:
        """Times of the L levels, (L,) float64, from T to t_min, equally spaced in log sigma."""
        return time_grid(sde, self.num_steps - 1, "log_snr", t_min=self.t_min, device=device)

    def step(self, sde, score, x, t, t_next, generator, state):  # pragma: no cover - solve is overridden
        raise NotImplementedError("annealed_langevin runs its own level loop (see solve)")

    def solve(self, sde, score, x, ts, generator, callback):
        B, nd = x.shape[0], x.ndim
        a_all, s_all = sde.marginal_coeffs(ts)  # float64 (L,)
        sigmas = s_all / a_all
        eps = NCSN_STEP_RATIO * sigmas[-1] ** 2 if self.epsilon is None else torch.as_tensor(self.epsilon, dtype=ts.dtype)
        alphas = (eps * (sigmas / sigmas[-1]) ** 2).to(x.dtype)
        a_x = a_all.to(x.dtype)
        y = x / a_x[0]
        for i in range(ts.numel()):
            t = ts[i].expand(B)
            a_i, alpha = a_x[i], alphas[i]
            for _ in range(self.steps_per_level):
                grad_y = a_i * score(a_i * y, t)  # the score of the sigma_i-perturbed data at y
                z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                y = y + 0.5 * alpha * grad_y + alpha.sqrt() * z
            if callback is not None:
                callback(i, ts[i], a_i * y)
        return a_x[-1] * y

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", steps_per_level={self.steps_per_level}, epsilon={self.epsilon})"
