"""Every figure of the package: sample pictures, image grids, the loss curve, the trained-score
error against t, the forward SDEs' marginals over exact log p_t contours (Song et al. 2021, eq. 5-12),
class-conditional pictures (points coloured by class, images one row per class), and the report's
quality-vs-NFE, training and guidance (purity vs per-class quality) panels.

Matplotlib is imported lazily with the non-interactive Agg backend, and every file is written
atomically (`sde_gen.io.atomic_save_figure`). The apps gather the numbers; the drawing is here.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .io import atomic_save_figure

__all__ = [
    "pyplot",
    "save_picture",
    "plot_samples_vs_data",
    "image_grid",
    "class_image_grid",
    "plot_loss",
    "plot_score_error",
    "plot_forward_grid",
    "plot_quality_panels",
    "plot_training_bars",
    "plot_guidance_sweep",
    "distinct_colours",
    "GRID_GAP",
]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: matplotlib's default ten colours ("C0".."C9", the tab10 palette)
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def distinct_colours(n: int) -> List[Tuple[float, float, float]]:
    """`n` distinct RGB colours for `n` lines or classes: matplotlib's ten for n <= 10, else n hues
    evenly spaced on the colour wheel with alternating brightness (the default cycle repeats after
    ten, so an eleventh sampler would share the first one's colour)."""
    import colorsys

    from matplotlib.colors import to_rgb

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}")
    if n <= 10:
        return [to_rgb(c) for c in _TAB10[:n]]
    return [colorsys.hsv_to_rgb(i / n, 0.85 if i % 2 else 0.65, 0.9 if i % 2 == 0 else 0.6) for i in range(n)]


def _outside(p: torch.Tensor, xlim: Tuple[float, float], ylim: Tuple[float, float]) -> int:
    """How many of the (N, 2) points fall outside the frame xlim x ylim."""
    inside = (p[:, 0] >= xlim[0]) & (p[:, 0] <= xlim[1]) & (p[:, 1] >= ylim[0]) & (p[:, 1] <= ylim[1])
    return int((~inside).sum())


def _save(fig, path: str, tight: bool = True) -> None:
    """Lay out (unless `tight` is False), write `fig` atomically to `path`, and free it."""
    if tight:
        fig.tight_layout()
    atomic_save_figure(fig, path)
    pyplot().close(fig)


def save_picture(
    path: str,
    samples: torch.Tensor,
    reference: Optional[torch.Tensor] = None,
    title: str = "",
    labels: Optional[torch.Tensor] = None,
    reference_labels: Optional[torch.Tensor] = None,
) -> None:
    """Write a picture of `samples` (N, *event), next to `reference` samples when given.

    2-D vectors: scatter plots side by side. Longer vectors: coordinates (0, 1), the top two
    principal directions of the reference (or of the samples) and a histogram along the top one.
    Images (N, C, H, W): a grid of up to 64 images, each min-max scaled.

    With `labels` ((N,) requested class of each sample; `reference_labels` likewise for the
    reference): points are coloured by class, and images are drawn one row per class
    (`class_image_grid`, up to 10 per class).
    """
    plt = pyplot()
    x = samples.detach().to("cpu", torch.float64)
    ref = None if reference is None else reference.detach().to("cpu", torch.float64)
    lab = None if labels is None else labels.detach().to("cpu")
    ref_lab = None if reference_labels is None else reference_labels.detach().to("cpu")
    if x.ndim == 4:
        if lab is None:
            k = min(64, x.shape[0])
            cols = int(math.ceil(math.sqrt(k)))
            grid, size, classes = image_grid(x[:k], per_image_range=True), (cols, cols), None
        else:
            per_class = min(10, int(torch.bincount(lab).max()))
            grid, classes = class_image_grid(x, lab, per_class=per_class, per_image_range=True)
            size = (1.5 + 0.8 * per_class, 1.0 + 0.8 * len(classes))
        fig, ax = plt.subplots(figsize=size)
        ax.imshow(grid.numpy(), cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)
        if classes is None:
            ax.axis("off")
        else:  # one row per class: name the rows
            H = x.shape[2]
            ax.set_xticks([]), ax.set_yticks([(H + 1) * i + H / 2 for i in range(len(classes))])
            ax.set_yticklabels([f"class {c}" for c in classes])
        fig.suptitle(title)
        _save(fig, path, tight=False)
        return
    x = x.flatten(1)
    ref = None if ref is None else ref.flatten(1)
    pts = [("samples", x, lab)] + ([("exact", ref, ref_lab)] if ref is not None else [])
    def colour(name, l):
        if l is not None:  # class c is colour "Cc" in every panel and every run
            palette = distinct_colours(max(10, int(l.max()) + 1))  # class c: the same colour in every panel and run
            return {"c": [palette[c] for c in l.tolist()]}
        return {"color": "k" if name == "exact" else "C0"}

    if x.shape[1] == 2:
        both = torch.cat([p for _, p, _ in pts])
        lim = float(both.abs().quantile(0.995)) * 1.1 + 0.1
        fig, axes = plt.subplots(1, len(pts), figsize=(4 * len(pts), 4), squeeze=False)
        for ax, (name, p, l) in zip(axes[0], pts):
            ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, **colour(name, l))
            out = _outside(p, (-lim, lim), (-lim, lim))
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
            ax.set_title(f"{name} ({out} of {p.shape[0]} outside the frame)")
    elif x.shape[1] == 1:
        fig, axes = plt.subplots(1, 1, figsize=(5, 4), squeeze=False)
        for name, p, _ in pts:
            axes[0, 0].hist(p[:, 0].numpy(), bins=60, density=True, alpha=0.5, label=name)
        axes[0, 0].legend()
    else:
        basis = ref if ref is not None else x
        _, vecs = torch.linalg.eigh(torch.cov(basis.T))
        top2 = vecs[:, [-1, -2]]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4), squeeze=False)
        D = x.shape[1]
        views = [(f"coordinates 0, 1 of {D}", lambda p: p[:, :2]),
                 (f"top-2 principal directions (of {D} coordinates)", lambda p: p @ top2)]
        for ax, (name, view) in zip(axes[0, :2], views):
            for label, p, l in reversed(pts):
                q = view(p)
                style = colour(label, l)
                if l is not None and label == "exact":  # classes coloured: exact points as small crosses
                    style["marker"] = "x"
                ax.scatter(q[:, 0], q[:, 1], s=2, alpha=0.3, label=label, **style)
            ax.set_title(name + " (every point shown)"), ax.legend(markerscale=4)
        for label, p, _ in pts:
            axes[0, 2].hist((p @ top2[:, 0]).numpy(), bins=60, density=True, alpha=0.5, label=label)
        axes[0, 2].set_title("marginal along the top principal direction"), axes[0, 2].legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_samples_vs_data(x: torch.Tensor, data, path: str, step: int) -> None:
    """Training-time picture: EMA samples `x` next to the data set's test data (points or images)."""
    plt = pyplot()
    if len(data.event_shape) == 1:
        ref = data.test[: x.shape[0]]
        D = data.event_shape[0]
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), sharex=True, sharey=True)
        # the frame fits the data; samples beyond it are counted in the title, never silently cut
        lim = float(ref[:, :2].abs().max()) * 1.2
        for ax, pts, title in ((axes[0], ref, "data"), (axes[1], x, f"EMA samples (step {step})")):
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3, color="k")
            out = _outside(pts[:, :2], (-lim, lim), (-lim, lim))
            ax.set_title(f"{title}\n{out} of {pts.shape[0]} outside the frame", fontsize=10), ax.set_aspect("equal")
            ax.set_xlabel("x[0]"), ax.set_ylabel("x[1]")
        axes[0].set_xlim(-lim, lim), axes[0].set_ylim(-lim, lim)
        if D > 2:
            fig.suptitle(f"coordinates 0 and 1 of {D}")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, imgs, title in ((axes[0], data.test, "data"), (axes[1], x, f"EMA samples (step {step})")):
            ax.imshow(image_grid(imgs[:64]).numpy(), cmap="gray" if data.event_shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_title(title), ax.axis("off")
    _save(fig, path)


#: the value of the gaps between grid images and of empty cells: mid-gray, distinct from black
#: backgrounds and from white strokes (a white gap merged with the strokes of digits)
GRID_GAP = 0.5


def image_grid(x: torch.Tensor, per_image_range: bool = False, cols: Optional[int] = None) -> torch.Tensor:
    """The one image grid of the package: (B, C, H, W) images -> one array in [0, 1].

    Args:
        x: images in model space [-1, 1] (clamped), any device and dtype.
        per_image_range: stretch each image's own [min, max] to [0, 1] instead (samples of a
            network that leave [-1, 1] stay visible).
        cols: images per row (None: ceil(sqrt(B)), a square-ish grid); the cells after the
            last image stay gray (`GRID_GAP`).

    Returns:
        (rows (H + 1), cols (W + 1)) for C = 1, else (rows (H + 1), cols (W + 1), C), float32 on
        the CPU; a one-pixel mid-gray gap (`GRID_GAP`) separates the images; images fill row by row.
    """
    B, C, H, W = x.shape
    if cols is None:
        cols = int(math.ceil(math.sqrt(B)))
    elif isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be an integer >= 1 or None; got {cols!r}")
    rows = int(math.ceil(B / cols))
    x = x.detach().to("cpu", torch.float32)
    if per_image_range:
        lo = x.flatten(1).min(1).values[:, None, None, None]
        hi = x.flatten(1).max(1).values[:, None, None, None]
        img = (x - lo) / (hi - lo).clamp_min(1e-12)
    else:
        img = (x.clamp(-1, 1) + 1) / 2
    grid = torch.full((C, rows * (H + 1), cols * (W + 1)), GRID_GAP)
    for i in range(B):
        r, c = divmod(i, cols)
        grid[:, r * (H + 1): r * (H + 1) + H, c * (W + 1): c * (W + 1) + W] = img[i]
    return grid[0] if C == 1 else grid.permute(1, 2, 0)


def class_image_grid(
    x: torch.Tensor, labels: torch.Tensor, per_class: int = 10, per_image_range: bool = False
) -> Tuple[torch.Tensor, List[int]]:
    """Images one row per class: the first `per_class` images of each class present in `labels`.

    Args:
        x: (B, C, H, W) images (as for `image_grid`). labels: (B,) class of each image.
        per_class: images per row; a class with fewer leaves its row's remaining cells gray.
        per_image_range: as for `image_grid`.

    Returns:
        (grid, classes): the rows stacked in increasing class order, each row `image_grid` of
        that class's images with `cols=per_class`; `classes` lists the class of each row.
    """
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), one per image; got {tuple(labels.shape)}")
    labels = labels.detach().to("cpu")
    classes = sorted(set(labels.tolist()))
    rows = [image_grid(x[(labels == c).nonzero()[:per_class, 0].to(x.device)], per_image_range, cols=per_class)
            for c in classes]
    return torch.cat(rows, dim=0), classes


def plot_loss(rows: List[List[float]], path: str) -> None:
    """The loss curve from rows (step, mean loss, ...), log scale."""
    if not rows:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = [r[0] for r in rows]
    ax.plot(steps, [r[1] for r in rows])
    ax.set_xlabel("step"), ax.set_ylabel("DSM loss (mean over log interval)"), ax.set_yscale("log")
    _save(fig, path)


def plot_score_error(result: Dict[str, torch.Tensor], path: str, title: str = "") -> None:
    """Save err(t) of `diagnostics.score_error_vs_t` (with the zero-score reference) on log-log axes."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    t = result["t"].numpy()
    ax.errorbar(t, result["error"].numpy(), yerr=2 * result["stderr"].numpy(), marker="o", ms=3, label="trained score")
    ax.plot(t, result["reference"].numpy(), ls="--", color="gray", label="zero score (scale)")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("t"), ax.set_ylabel(r"$E\,s(t)^2\,|s_\theta - \nabla\log p_t|^2$")
    ax.set_title(title or "trained-score error vs t"), ax.legend(fontsize=8)
    _save(fig, path)


def plot_forward_grid(sdes, oracle, times: Sequence[float], n: int = 2000, generator=None):
    """Rows = SDEs, columns = times (fractions of T): samples of x_t = a(t) x_0 + s(t) z over the
    exact log p_t contours of a 2-D oracle.

    Args:
        sdes: {row label: SDE}. oracle: a 2-D `GaussianMixture`. times: fractions of T.
        n: samples per panel. generator: source of x_0 and z.

    Returns:
        The matplotlib figure (the caller saves or shows it).
    """
    fig, axes = pyplot().subplots(len(sdes), len(times), figsize=(2.6 * len(times), 2.6 * len(sdes)), squeeze=False)
    x0 = oracle.sample(n, generator, dtype=torch.float64)
    for r, (name, sde) in enumerate(sdes.items()):
        for c, frac in enumerate(times):
            ax = axes[r, c]
            t = torch.full((n,), frac * sde.T, dtype=torch.float64)
            xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=generator, dtype=torch.float64))
            lim = float(xt.abs().quantile(0.995)) * 1.1 + 0.5
            grid = torch.linspace(-lim, lim, 120, dtype=torch.float64)
            gx, gy = torch.meshgrid(grid, grid, indexing="xy")
            pts = torch.stack([gx.flatten(), gy.flatten()], 1)
            logp = oracle.log_prob(pts, frac * sde.T, sde).reshape(120, 120)
            ax.contour(gx, gy, logp.clamp_min(float(logp.max()) - 12), levels=10, linewidths=0.6)
            ax.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.4, color="k")
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {frac:g} T")
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle("Forward SDEs on the ring mixture: samples of x_t over exact log p_t contours")
    fig.tight_layout()
    return fig


#: one panel of `plot_quality_panels`: (title, y label, {line label: [(nfe, value)]}, (floor mean, floor std))
QualityPanel = Tuple[str, str, Dict[str, List[Tuple[float, float]]], Tuple[float, float]]


def plot_quality_panels(panels: Sequence[QualityPanel], path: str) -> None:
    """Quality vs NFE spent (log-log), one panel each, with the noise floor (mean +- std) as a band."""
    n = max(1, len(panels))
    fig, axes = pyplot().subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (title, ylabel, lines, (fm, fs)) in zip(axes[0], panels):
        for colour, (label, pts) in zip(distinct_colours(len(lines)), sorted(lines.items())):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, color=colour)
        ax.axhspan(max(fm - fs, fm * 1e-3), fm + fs, color="0.8", alpha=0.7, label="noise floor (mean ± std)")
        ax.axhline(fm, color="0.5", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("NFE spent"), ax.set_ylabel(ylabel), ax.set_title(title)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_training_bars(
    labels: List[str], ratios: List[float], floor_spread: List[float], score_errors: List[float], path: str
) -> None:
    """One bar per training run: final sliced W2 / noise floor (with the floor's mean + 2 std
    when `floor_spread` is non-empty) and the mean score error against the oracle."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 0.45 * len(labels) + 1.6))
    axes[0].barh(labels, ratios, color="C0")
    if floor_spread:
        axes[0].axvline(1.0, color="k", lw=0.8)
        axes[0].axvline(max(floor_spread), color="0.5", ls="--", lw=0.8, label="floor mean + 2 std")
        axes[0].legend(fontsize=8)
    axes[0].set_title("final sliced W2 / noise floor")
    axes[1].barh(labels, score_errors, color="C1")
    axes[1].set_xscale("log")
    axes[1].set_title("score error vs the oracle (mean over t)")
    _save(fig, path)


#: one line of `plot_guidance_sweep`: (label, [(guidance scale, per-class SW2 / floor, class purity)])
GuidanceLine = Tuple[str, List[Tuple[float, float, float]]]


def plot_guidance_sweep(lines: Sequence[GuidanceLine], path: str) -> None:
    """Class purity against per-class quality (mean sliced W2 / noise floor), one point per guidance
    scale labelled "s=...", one line per setting (problem, sampler, kind): the purity-diversity
    trade-off. A ratio near 1 is an exact class law; guidance above 1 buys purity with collapse."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.8))
    for colour, (label, pts) in zip(distinct_colours(len(lines)), lines):
        pts = sorted(pts)
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        ax.plot(xs, ys, marker="o", color=colour, label=label)
        for s, xv, yv in pts:
            ax.annotate(f"s={s:g}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="0.5", lw=0.8, ls="--", label="noise floor (exact class samples)")
    ax.set_xscale("log")
    ax.set_xlabel("per-class sliced W2 / noise floor (mean over classes)")
    ax.set_ylabel("class purity (exact posterior)")
    ax.set_title("guidance: purity vs diversity")
    ax.legend(fontsize=7)
    _save(fig, path)
