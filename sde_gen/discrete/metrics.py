"""Sample quality against an exact `CategoricalMixture`.

    total variation   TV(p_hat, p) = 1/2 sum_x |p_hat(x) - p(x)| over all K^L states (small L, K)
    marginal TV       mean over positions l of TV between the empirical and exact laws of x^l
    pairwise TV       mean over pairs l < m of TV between the empirical and exact laws of (x^l, x^m):
                      sees the correlations that per-position marginals miss
    mode-weight error TV between the mixture weights and the fraction of samples whose most
                      responsible component (at t = 0) is c
    noise floor       the metric of n exact samples (mean and std over replicates): what a perfect
                      sampler scores at that sample size

Everything is computed in float64 on the device of the samples.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .._validation import check_positive_int
from .oracle import CategoricalMixture
from .processes import check_tokens

__all__ = ["total_variation", "marginal_tv", "pairwise_tv", "mode_weight_tv", "exact_noise_floor"]


def _codes(x: torch.Tensor, K: int) -> torch.Tensor:
    L = x.shape[1]
    radix = K ** torch.arange(L - 1, -1, -1, device=x.device)
    return (x * radix).sum(1)


def total_variation(samples: torch.Tensor, oracle: CategoricalMixture) -> torch.Tensor:
    """TV between the empirical law of `samples` (n, L) and the oracle's exact law: 0-d float64."""
    x = check_tokens(samples, oracle.num_classes, "samples")
    K, L = oracle.num_classes, oracle.num_positions
    states = oracle.enumerate().to(x.device)
    p = oracle.log_prob(states).exp()
    emp = torch.bincount(_codes(x.reshape(x.shape[0], L), K), minlength=K ** L).to(torch.float64) / x.shape[0]
    return 0.5 * (emp - p.to(x.device)).abs().sum()


def marginal_tv(samples: torch.Tensor, oracle: CategoricalMixture) -> torch.Tensor:
    """Mean over positions of the TV between empirical and exact per-position marginals: 0-d float64."""
    x = check_tokens(samples, oracle.num_classes, "samples")
    n, K = x.shape[0], oracle.num_classes
    emp = torch.nn.functional.one_hot(x.reshape(n, -1), K).to(torch.float64).mean(0)  # (L, K)
    return 0.5 * (emp - oracle.marginals().to(x.device)).abs().sum(1).mean()


def pairwise_tv(samples: torch.Tensor, oracle: CategoricalMixture) -> torch.Tensor:
    """Mean over position pairs l < m of the TV between empirical and exact pair laws: 0-d float64."""
    x = check_tokens(samples, oracle.num_classes, "samples")
    n, K, L = x.shape[0], oracle.num_classes, oracle.num_positions
    if L < 2:
        raise ValueError(f"pairwise_tv needs at least 2 positions; got L = {L}")
    h = torch.nn.functional.one_hot(x.reshape(n, L), K).to(torch.float64).reshape(n, L * K)
    emp = (h.T @ h / n).reshape(L, K, L, K).permute(0, 2, 1, 3)  # (L, L, K, K)
    pr = oracle.probs.to(x.device)
    exact = torch.einsum("c,clk,cmj->lmkj", oracle.weights.to(x.device), pr, pr)
    tv = 0.5 * (emp - exact).abs().sum((2, 3))
    iu = torch.triu_indices(L, L, 1, device=x.device)
    return tv[iu[0], iu[1]].mean()


def mode_weight_tv(samples: torch.Tensor, oracle: CategoricalMixture) -> torch.Tensor:
    """TV between the weights and the empirical frequencies of the most responsible component: 0-d float64."""
    x = check_tokens(samples, oracle.num_classes, "samples")
    x = x.reshape(x.shape[0], -1)
    log_r = oracle.weights.to(x.device).log() + oracle.component_log_likelihood(x, oracle.probs)
    freq = torch.bincount(log_r.argmax(1), minlength=oracle.num_components).to(torch.float64) / x.shape[0]
    return 0.5 * (freq - oracle.weights.to(x.device)).abs().sum()


def exact_noise_floor(metric: Callable[[torch.Tensor, CategoricalMixture], torch.Tensor], oracle: CategoricalMixture,
                      n: int, replicates: int = 10, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """`metric` of n exact samples over `replicates` draws: {"mean", "std", "replicates"}."""
    check_positive_int("n", n)
    check_positive_int("replicates", replicates)
    vals = torch.stack([metric(oracle.sample(n, generator), oracle) for _ in range(replicates)])
    return {"mean": float(vals.mean()), "std": float(vals.std()) if replicates > 1 else 0.0, "replicates": replicates}
