"""Trained-score diagnostics against an exact oracle.

For data with a known distribution (a `GaussianMixture`), the exact perturbed score
grad log p_t is available in closed form, so the error of a trained score network can be
measured directly at every noise level:

    err(t) = E_{x_t ~ p_t} [ s(t)^2 || s_theta(x_t, t) - grad log p_t(x_t) ||^2 ],

the squared error in noise-prediction units (weighting s(t)^2 as in the `sigma2` DSM loss).
By the DSM identity (Vincent 2011), the DSM loss at time t equals err(t) / 2 plus the
irreducible constant a^2 / (2 s^2) E tr Cov(x_0 | x_t), so err(t) is exactly the part of the loss
that training can still remove. Samples x_t come from the exact marginal x_t = a(t) x_0 + s(t) z.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from ._validation import check_positive_int
from .plots import plot_score_error  # noqa: F401  (drawn in plots.py; training.py imports it from here)
from .sdes import SDE

__all__ = ["score_error_vs_t", "default_time_grid", "plot_score_error"]


def default_time_grid(sde: SDE, num: int = 12) -> torch.Tensor:
    """(num,) float64 times log-spaced from sde.eps to sde.T (the error varies most near t = eps)."""
    num = check_positive_int("num", num)
    return torch.logspace(torch.log10(torch.tensor(sde.eps)), torch.log10(torch.tensor(sde.T)), num, dtype=torch.float64)


@torch.no_grad()
def score_error_vs_t(
    score_fn,
    sde: SDE,
    oracle,
    ts: Optional[Sequence[float]] = None,
    n: int = 2048,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Dict[str, torch.Tensor]:
    """The s(t)^2-weighted squared score error on a grid of times.

    Args:
        score_fn: `score_fn(x, t)` (e.g. a `ScoreModel`).
        sde: the forward SDE.
        oracle: the exact data distribution (a `GaussianMixture`).
        ts: times (default: `default_time_grid(sde)`).
        n: Monte Carlo samples per time.
        generator: randomness for x_0 and z.
        device, dtype: of the network input (None device: the generator's).

    Returns:
        {"t": (T,) float64, "error": (T,) float64 mean of s^2 ||s_theta - s_exact||^2,
         "stderr": (T,) its Monte Carlo standard error, "reference": (T,) s^2 E||grad log p_t||^2,
         the error of the zero score, for scale}.
    """
    n = check_positive_int("n", n)
    if device is None:
        device = generator.device if generator is not None else None
    ts = default_time_grid(sde) if ts is None else torch.as_tensor(ts, dtype=torch.float64)
    errs, ses, refs = [], [], []
    for t_val in ts.tolist():
        x0 = oracle.sample(n, generator, device=device, dtype=torch.float64)
        t = torch.full((n,), t_val, dtype=torch.float64, device=x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        xt = sde.perturb(x0, t, z)
        s2 = sde.marginal_var(t)
        exact = oracle.score(xt, t, sde)
        model = score_fn(xt.to(dtype), t.to(dtype)).to(torch.float64)
        per = s2 * (model - exact).pow(2).flatten(1).sum(1)
        errs.append(per.mean())
        ses.append(per.std() / n ** 0.5)
        refs.append((s2 * exact.pow(2).flatten(1).sum(1)).mean())
    return {"t": ts, "error": torch.stack(errs).cpu(), "stderr": torch.stack(ses).cpu(), "reference": torch.stack(refs).cpu()}
