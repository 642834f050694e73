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

`LangevinSampler` ("langevin") uses the corrector on its own: at every grid time t_i from T down to
t_min it runs `corrector_steps` Langevin steps targeting p_{t_i} (annealed Langevin on the SDE's
grid, as in Song et al. 2021, Alg. 2-3 with the predictor removed). `langevin_correct` is the
building block `pc` uses after each predictor step.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..sdes import SDE
from ..utils import append_dims
from .base import Sampler


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


class LangevinSampler(Sampler):
    """Langevin MCMC at every grid time with the SNR rule (the corrector alone); every SDE.

    Args:
        snr: signal-to-noise ratio r of the step-size rule (Song et al. use 0.16 for CIFAR-10).
        corrector_steps: Langevin steps per grid time (evaluations per step).
        norm: "batch" (default) or "sample", how the rule's norms are taken (see `langevin_correct`).
        **kwargs: `Sampler` options (nfe, denoise, grid, rho, t_min).
    """

    name = "langevin"
    stochastic = True
    order = 1.0
    default_grid = "uniform"

    def __init__(self, nfe: int = 100, denoise: bool = True, grid: Optional[str] = None, rho: float = 7.0,
                 t_min: Optional[float] = None, snr: float = 0.16, corrector_steps: int = 1, norm: str = "batch"):
        self.snr = check_positive("snr", snr)
        self.norm = check_choice("norm", norm, NORMS)
        self.corrector_steps = check_positive_int("corrector_steps", corrector_steps)
        self.evals_per_step = self.corrector_steps
        super().__init__(nfe=nfe, denoise=denoise, grid=grid, rho=rho, t_min=t_min)

    def step(self, sde, score, x, t, t_next, generator, state):
        alpha = langevin_alpha(sde, t, t_next)
        return langevin_correct(score, x, t_next, alpha, self.snr, self.corrector_steps, generator, self.norm)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", snr={self.snr}, corrector_steps={self.corrector_steps}, norm={self.norm!r})"
