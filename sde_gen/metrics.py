"""Sample-quality metrics against exact targets.

    sliced Wasserstein-2   SW2(p, q)^2 = E_theta W2(theta#p, theta#q)^2 over uniform directions
                           theta on the sphere; 1-D W2 from sorted samples (Rabin et al. 2011;
                           Bonneel et al. 2015)
    noise floor            the same distance between two independent sets of exact samples of the
                           same size: what a perfect sampler scores, as mean and std over replicates
    mode-weight error      total-variation distance between the mixture weights and the fraction
                           of samples assigned to each component (by posterior responsibility)
    Bures-Wasserstein      the exact W2 between Gaussians N(m1, C1) and N(m2, C2):
                           |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^1/2 C1 C2^1/2)^1/2) (Dowson & Landau 1982)

Everything is computed in float64 on the device of the inputs.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ._validation import check_positive_int

__all__ = [
    "sliced_wasserstein",
    "noise_floor",
    "mode_weight_error",
    "bures_wasserstein",
    "gaussian_w2_to_target",
]


def _sorted_quantiles(x: torch.Tensor, k: int) -> torch.Tensor:
    """(k, P) quantiles at levels (i + 1/2) / k of each column of the sorted (n, P) array."""
    n = x.shape[0]
    if n == k:
        return x
    pos = (torch.arange(k, dtype=x.dtype, device=x.device) + 0.5) * n / k - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(x.dtype)).clamp(0, 1)[:, None]
    return x[lo] * (1 - w) + x[hi] * w


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 1000,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between two sample sets (B, *event) (sizes may differ).

    Args:
        x, y: samples; flattened to (n, D) and (m, D).
        num_projections: random directions (uniform on the sphere).
        generator: randomness for the directions (use the same one to compare runs).

    Returns:
        A 0-d float64 tensor, sqrt(mean over directions of the squared 1-D W2).
    """
    check_positive_int("num_projections", num_projections)
    x = x.flatten(1).to(torch.float64)
    y = y.flatten(1).to(device=x.device, dtype=torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    gen_device = generator.device if generator is not None else x.device
    theta = torch.randn(x.shape[1], num_projections, generator=generator, device=gen_device, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    k = max(px.shape[0], py.shape[0])
    diff = _sorted_quantiles(px, k) - _sorted_quantiles(py, k)
    return diff.pow(2).mean().sqrt()


def noise_floor(
    sample_fn: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    replicates: int = 10,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, float]:
    """Distance between independent exact sample sets of size `n`: the best a sampler can score.

    Args:
        sample_fn: `sample_fn(n, generator)` draws n exact samples.
        n: sample size (use the size of the sample set being judged).
        distance: `distance(x, y)` -> 0-d tensor, e.g. `sliced_wasserstein`.
        replicates: number of independent pairs.
        generator: randomness.

    Returns:
        {"mean": ..., "std": ..., "replicates": ...} over the replicates.
    """
    check_positive_int("replicates", replicates)
    vals = torch.stack([distance(sample_fn(n, generator), sample_fn(n, generator)).to(torch.float64) for _ in range(replicates)])
    std = float(vals.std()) if replicates > 1 else 0.0
    return {"mean": float(vals.mean()), "std": std, "replicates": replicates}


def mode_weight_error(samples: torch.Tensor, mixture) -> torch.Tensor:
    """Total-variation distance between the mixture weights and the empirical component
    frequencies of `samples` (each sample assigned to its most responsible component).

    Args:
        samples: (n, D). mixture: a `GaussianMixture`.

    Returns:
        0-d float64 tensor in [0, 1].
    """
    x = samples.to(torch.float64)
    labels = mixture.component_log_posterior(x).argmax(1)
    freq = torch.bincount(labels, minlength=mixture.num_components).to(torch.float64) / x.shape[0]
    return 0.5 * (freq - mixture.weights.to(x.device)).abs().sum()


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.transpose(-1, -2)


def bures_wasserstein(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Exact W2 distance between N(m1, c1) and N(m2, c2); means (D,), covariances (D, D)."""
    m1, c1, m2, c2 = (v.to(torch.float64) for v in (m1, c1, m2, c2))
    root2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(root2 @ c1 @ root2)
    w2sq = (m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * cross)
    return w2sq.clamp_min(0).sqrt()


def gaussian_w2_to_target(samples: torch.Tensor, mixture) -> torch.Tensor:
    """Bures-Wasserstein distance between the Gaussian fitted to `samples` (mean, covariance)
    and the target's mean and covariance (exact when the target is a single Gaussian)."""
    x = samples.flatten(1).to(torch.float64)
    dev = x.device
    return bures_wasserstein(x.mean(0), torch.cov(x.T), mixture.mean().to(dev), mixture.covariance().to(dev))
