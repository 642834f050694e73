"""Langevin corrector with the signal-to-noise-ratio step-size rule (Song et al. 2021,
Algorithms 4 (VE) and 5 (VP), App. G).

At a fixed time t, Langevin MCMC targets p_t:

    eps_i = 2 alpha_i (snr ||z|| / ||score(x, t)||)^2,     x <- x + eps_i score(x, t) + sqrt(2 eps_i) z,

where ||.|| is the norm over the event dimensions averaged over the batch (as in the reference code),
so all samples share one step size; the average is a device-side reduction, not a host sync.

Why not per-sample norms (option norm="sample")? A step size eps(x) that depends on the state turns
Langevin dynamics dx = eps(x) score dt + sqrt(2 eps(x)) dw into a process whose stationary law is
p_t(x) / eps(x) (the Fokker-Planck flux eps p_s score - grad(eps p_s) vanishes for p_s ~ p_t / eps), i.e.
p_t |score|^2 here, and reusing the same z in the step size makes the noise non-Gaussian. Measured with
the exact score on the 16-D Gaussian (tests/test_samplers_sde.py): after 40 steps at snr = 0.16 the
batch rule stays at the Monte Carlo floor of the Bures-Wasserstein error, the per-sample rule drifts
to several times it. The option is kept for comparison only. alpha_i is
the retained-signal factor of the grid step that led to t: alpha_i = a_{t_{i-1}|t_i}^2, which is
1 - beta_i for the VP chain (Algorithm 5) and 1 for the VE chain (Algorithm 4); for sub-VP it is the
chain's own 1 - beta_i. The step size is computed on the device; nothing syncs with the host.

`LangevinCorrector` is the corrector object: after a grid step t -> t_next it runs M Langevin steps
targeting p_{t_next} (`pc` calls it after every predictor step). `LangevinSampler` ("langevin") uses
it on its own: at every grid time t_i from T down to t_min it runs `corrector_steps` Langevin steps
targeting p_{t_i} (annealed Langevin on the SDE's grid, as in Song et al. 2021, Alg. 2-3 with the
predictor removed). `langevin_correct` is the building block of both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..sdes import SDE
from ..utils import append_dims
from .base import GridSampler


#: how the norms of the step-size rule are taken (see the module docstring)
NORMS = ("batch", "sample")


def langevin_alpha(sde: SDE, t_prev: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_i = a_{t_prev|t}^2: the signal kept by the chain's step from t to t_prev > t (float64, (B,))."""
    ratio, _ = sde.transition_coeffs(t, t_prev)
    return ratio ** 2


def langevin_correct(
    score,
    x: torch.Tensor,
    t: torch.Tensor,
    alpha: torch.Tensor,
    snr: float,
    num_steps: int,
    generator: Optional[torch.Generator],
    norm: str = "batch",
) -> torch.Tensor:
    """Run `num_steps` Langevin steps targeting p_t with the SNR step-size rule.

    Args:
        score: `score(x, t)` -> tensor like x (each call counts one evaluation).
        x: (B, *event) current samples.
        t: (B,) times (float64 is fine; the score casts).
        alpha: (B,) alpha_i of Algorithm 5 (1 for VE).
        snr: the target signal-to-noise ratio r.
        num_steps: Langevin steps M.
        generator: randomness.
        norm: "batch" (||z|| and ||score|| averaged over the batch, one step size for all samples)
            or "sample" (per-sample norms; biased, see the module docstring).

    Returns:
        x after the steps, like `x`.
    """
    a = append_dims(alpha.to(x.dtype), x.ndim)
    for _ in range(num_steps):
        grad = score(x, t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        grad_norm = grad.flatten(1).norm(dim=1)
        noise_norm = z.flatten(1).norm(dim=1)
        if norm == "batch":
            grad_norm, noise_norm = grad_norm.mean().expand(x.shape[0]), noise_norm.mean().expand(x.shape[0])
        grad_norm, noise_norm = append_dims(grad_norm, x.ndim), append_dims(noise_norm, x.ndim)
        # a vanishing score (a sample exactly at a mode) gets step 0 rather than inf
        ratio = torch.where(grad_norm > 0, noise_norm / grad_norm, torch.zeros_like(grad_norm))
        step = 2 * a * (snr * ratio) ** 2
        x = x + step * grad + (2 * step).sqrt() * z
    return x


@dataclass(eq=False)
class LangevinCorrector:
    """The Langevin corrector of predictor-corrector sampling (Song et al. 2021, Alg. 4-5).

    Args:
        snr: signal-to-noise ratio r of the step-size rule (Song et al. use 0.16 for CIFAR-10).
        num_steps: M, Langevin steps after every predictor step (0: no correction).
        norm: "batch" (default) or "sample", how the rule's norms are taken (see `langevin_correct`).
    """

    snr: float = 0.16
    num_steps: int = 1
    norm: str = "batch"

    def __post_init__(self):
        self.snr = check_positive("snr", self.snr)
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 0:
            raise ValueError(f"num_steps must be an integer >= 0 (0: no correction); got {self.num_steps!r}")
        check_choice("norm", self.norm, NORMS)

    def __call__(self, sde: SDE, score, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
        """M Langevin steps targeting p_{t_next}, after a grid step from t > t_next (M evaluations).

        Args:
            sde: the forward SDE. score: `score(x, t)`.
            x: (B, *event). t, t_next: (B,) float64 times of the grid step that led to x.
            generator: randomness.
        """
        if self.num_steps == 0:
            return x
        alpha = langevin_alpha(sde, t, t_next)
        return langevin_correct(score, x, t_next, alpha, self.snr, self.num_steps, generator, self.norm)


@dataclass(eq=False, kw_only=True)
class LangevinSampler(GridSampler):
    """Langevin MCMC at every grid time with the SNR rule (the corrector alone); every SDE.

    Args:
        snr: signal-to-noise ratio r of the step-size rule (Song et al. use 0.16 for CIFAR-10).
        corrector_steps: Langevin steps per grid time (evaluations per step).
        norm: "batch" (default) or "sample", how the rule's norms are taken (see `langevin_correct`).
        (and the `Sampler` options)
    """

    name = "langevin"
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    snr: float = 0.16
    corrector_steps: int = 1
    norm: str = "batch"

    def __post_init__(self):
        check_positive_int("corrector_steps", self.corrector_steps)
        self._corrector = LangevinCorrector(snr=self.snr, num_steps=self.corrector_steps, norm=self.norm)
        self.snr = self._corrector.snr
        super().__post_init__()

    @property
    def evals_per_step(self) -> int:
        return self.corrector_steps

    def step(self, sde, score, x, i, t, t_next, generator, state):
        return self._corrector(sde, score, x, t, t_next, generator)
