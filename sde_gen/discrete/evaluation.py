"""Evaluation of a discrete diffusion model on a token data set (the training app's evaluation rows, the
sample app's metrics) and the picture of token samples.

    bits_per_dim      the negative ELBO (D3PM eq. 5, `losses.nelbo`: all T terms, one x_t draw each) of
                      held-out data, nats / (L ln 2), with its standard error over the points and its
                      three parts (prior L_T, diffusion sum L_{t-1}, reconstruction L_0)
    marginal_tv       mean over positions of the total variation between the per-position laws of the
                      samples and of the test set; `marginal_tv_train` is the same distance for as many
                      training points (what data of that size score: the finite-sample floor)
    exact (Markov)    for data with an exact `log_prob`: the exact NLL of the same test points in bits/dim
                      (the ELBO must lie above it) and the exact NLL of the samples (a sampler that
                      reproduces the law scores the entropy rate; worse samples score higher or lower)
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from .losses import nelbo

__all__ = ["marginal_tv_to", "elbo_report", "sample_report", "plot_token_grid"]


def marginal_tv_to(x: torch.Tensor, ref: torch.Tensor, num_levels: int) -> float:
    """Mean over positions of TV(law of x^l, law of ref^l), both empirical: a float."""
    a = torch.nn.functional.one_hot(x.reshape(x.shape[0], -1).cpu(), num_levels).double().mean(0)
    b = torch.nn.functional.one_hot(ref.reshape(ref.shape[0], -1).cpu(), num_levels).double().mean(0)
    return float(0.5 * (a - b).abs().sum(1).mean())


def _mean_se(v: torch.Tensor):
    n = v.shape[0]
    return float(v.mean()), (float(v.std()) / math.sqrt(n) if n > 1 else float("nan"))


def elbo_report(process, model, x0: torch.Tensor, generator: Optional[torch.Generator], batch_size: int,
                data=None) -> Dict[str, Any]:
    """The negative ELBO of the points `x0` (N, *event) in bits/dim, by batches of `batch_size`.

    Returns:
        {"bits_per_dim", "bits_per_dim_se", "prior_bpd", "diffusion_bpd", "reconstruction_bpd", "elbo_nfe"
         (model calls), "num_test"} and, for data with an exact `log_prob`, "exact_bits_per_dim" of the same points.
    """
    parts = []
    for start in range(0, x0.shape[0], batch_size):
        parts.append(nelbo(process, model, x0[start:start + batch_size], generator))
    cat = lambda name: torch.cat([getattr(r, name) for r in parts]).cpu()  # noqa: E731
    L = x0[0].numel()
    bpd = cat("bits_per_dim")
    mean, se = _mean_se(bpd)
    out = {"bits_per_dim": mean, "bits_per_dim_se": se, "num_test": int(x0.shape[0]),
           "elbo_nfe": sum(r.nfe for r in parts)}
    for key, name in (("prior_bpd", "prior"), ("diffusion_bpd", "diffusion"), ("reconstruction_bpd", "reconstruction")):
        out[key] = float(cat(name).mean()) / (L * math.log(2))
    if data is not None and hasattr(data, "log_prob"):
        out["exact_bits_per_dim"] = float(-data.log_prob(x0.cpu()).mean()) / (L * math.log(2))
    return out


def sample_report(samples: torch.Tensor, data) -> Dict[str, Any]:
    """Distances of token samples to the data: marginal TV to the test set next to the training set's, and
    (exact-likelihood data) the samples' exact NLL next to the entropy rate, both in bits/dim."""
    K = data.num_levels
    n = samples.shape[0]
    out = {"marginal_tv": marginal_tv_to(samples, data.test, K),
           "marginal_tv_train": marginal_tv_to(data.train[: min(n, data.train.shape[0])], data.test, K)}
    if hasattr(data, "log_prob"):
        L = samples[0].numel()
        out["sample_nll_bits_per_dim"] = float(-data.log_prob(samples.cpu()).mean()) / (L * math.log(2))
        out["entropy_bits_per_dim"] = data.entropy() / (L * math.log(2))
    return out


def plot_token_grid(x: torch.Tensor, num_levels: int, path: str, title: str = "", max_items: int = 64) -> None:
    """Save up to `max_items` token samples as a picture: a grid of images for (1, H, W) events, else one
    row of cells per sequence (grey level = id / (K - 1))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x[:max_items].cpu()
    n = x.shape[0]
    if x.ndim == 4 and x.shape[1] == 1:
        H, W = x.shape[2:]
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        canvas = torch.full((rows * (H + 1) - 1, cols * (W + 1) - 1), float("nan"))
        for i in range(n):
            r, c = divmod(i, cols)
            canvas[r * (H + 1): r * (H + 1) + H, c * (W + 1): c * (W + 1) + W] = x[i, 0].float()
        size = (max(3.0, cols * 0.5), max(3.0, rows * 0.5))
    else:
        canvas = x.reshape(n, -1).float()
        size = (max(3.0, canvas.shape[1] * 0.15), max(3.0, n * 0.15))
    fig, ax = plt.subplots(figsize=size)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    ax.imshow(canvas.numpy(), cmap=cmap, vmin=0, vmax=num_levels - 1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
