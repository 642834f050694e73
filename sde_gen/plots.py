"""Every figure of the package: sample pictures, image grids and the loss curve.

Matplotlib is imported lazily with the non-interactive Agg backend, and every file is written
atomically (`sde_gen.io.atomic_save_figure`).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .io import atomic_save_figure

__all__ = ["pyplot", "save_picture", "plot_samples_vs_data", "image_grid", "plot_loss"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_picture(path: str, samples: torch.Tensor, reference: Optional[torch.Tensor] = None, title: str = "") -> None:
    """Write a picture of `samples` (N, *event), next to `reference` samples when given.

    2-D vectors: scatter plots side by side. Longer vectors: coordinates (0, 1), the top two
    principal directions of the reference (or of the samples) and a histogram along the top one.
    Images (N, C, H, W): a grid of up to 64 images, each min-max scaled.
    """
    plt = pyplot()
    x = samples.detach().to("cpu", torch.float64)
    ref = None if reference is None else reference.detach().to("cpu", torch.float64)
    if x.ndim == 4:
        k = min(64, x.shape[0])
        cols = int(math.ceil(math.sqrt(k)))
        imgs = x[:k]
        lo = imgs.flatten(1).min(1).values[:, None, None, None]
        hi = imgs.flatten(1).max(1).values[:, None, None, None]
        imgs = ((imgs - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1)
        fig, axes = plt.subplots(cols, cols, figsize=(cols, cols), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < k:
                img = imgs[i]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        fig.suptitle(title)
        atomic_save_figure(fig, path)
        plt.close(fig)
        return
    x = x.flatten(1)
    ref = None if ref is None else ref.flatten(1)
    pts = [("samples", x)] + ([("exact", ref)] if ref is not None else [])
    if x.shape[1] == 2:
        both = torch.cat([p for _, p in pts])
        lim = float(both.abs().quantile(0.995)) * 1.1 + 0.1
        fig, axes = plt.subplots(1, len(pts), figsize=(4 * len(pts), 4), squeeze=False)
        for ax, (name, p) in zip(axes[0], pts):
            ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, color="k" if name == "exact" else "C0")
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.set_title(name)
    elif x.shape[1] == 1:
        fig, axes = plt.subplots(1, 1, figsize=(5, 4), squeeze=False)
        for name, p in pts:
            axes[0, 0].hist(p[:, 0].numpy(), bins=60, density=True, alpha=0.5, label=name)
        axes[0, 0].legend()
    else:
        basis = ref if ref is not None else x
        _, vecs = torch.linalg.eigh(torch.cov(basis.T))
        top2 = vecs[:, [-1, -2]]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4), squeeze=False)
        views = [("coordinates 0, 1", lambda p: p[:, :2]), ("top-2 principal directions", lambda p: p @ top2)]
        for ax, (name, view) in zip(axes[0, :2], views):
            for label, p in reversed(pts):
                q = view(p)
                ax.scatter(q[:, 0], q[:, 1], s=2, alpha=0.3, label=label, color="k" if label == "exact" else "C0")
            ax.set_title(name), ax.legend(markerscale=4)
        for label, p in pts:
            axes[0, 2].hist((p @ top2[:, 0]).numpy(), bins=60, density=True, alpha=0.5, label=label)
        axes[0, 2].set_title("marginal along the top principal direction"), axes[0, 2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def plot_samples_vs_data(x: torch.Tensor, data, path: str, step: int) -> None:
    """Training-time picture: EMA samples `x` next to the data set's test data (points or images)."""
    plt = pyplot()
    if len(data.event_shape) == 1:
        ref = data.test[: x.shape[0]]
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
        for ax, pts, title in ((axes[0], ref, "data"), (axes[1], x, f"EMA samples (step {step})")):
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3, color="k")
            ax.set_title(title), ax.set_aspect("equal")
        lim = float(ref[:, :2].abs().max()) * 1.2
        axes[0].set_xlim(-lim, lim), axes[0].set_ylim(-lim, lim)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, imgs, title in ((axes[0], data.test, "data"), (axes[1], x, f"EMA samples (step {step})")):
            ax.imshow(image_grid(imgs[:64], data), cmap="gray" if data.event_shape[0] == 1 else None)
            ax.set_title(title), ax.axis("off")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def image_grid(x: torch.Tensor, data) -> torch.Tensor:
    """(B, C, H, W) model-space images -> one (rows*H, cols*W[, C]) array in [0, 1]."""
    B, C, H, W = x.shape
    cols = int(math.ceil(math.sqrt(B)))
    rows = int(math.ceil(B / cols))
    img = ((x.clamp(-1, 1) + 1) / 2).float()
    grid = torch.ones(C, rows * (H + 1), cols * (W + 1))
    for i in range(B):
        r, c = divmod(i, cols)
        grid[:, r * (H + 1): r * (H + 1) + H, c * (W + 1): c * (W + 1) + W] = img[i]
    return grid[0] if C == 1 else grid.permute(1, 2, 0)


def plot_loss(rows: List[List[float]], path: str) -> None:
    """The loss curve from rows (step, mean loss, ...), log scale."""
    if not rows:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = [r[0] for r in rows]
    ax.plot(steps, [r[1] for r in rows])
    ax.set_xlabel("step"), ax.set_ylabel("DSM loss (mean over log interval)"), ax.set_yscale("log")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
