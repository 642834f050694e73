"""The sampling app `sde-gen-sample` (also `python -m sde_gen.sample`).

Draws samples with any registered sampler (`sampler=` is a Hydra config group) either from an
oracle problem with its exact score (`source=oracle problem=ring2d`) or from a training
checkpoint's EMA weights (`source=checkpoint checkpoint=PATH`), and writes into Hydra's run dir:

    samples.pt     the (N, *event) samples as one tensor (atomic write)
    samples.png    a picture: a scatter against exact samples (2-D), 2-D projections and a
                   1-D marginal against exact samples (> 2-D vectors), an image grid (images)
    metrics.json   the sampler and its options, the NFE requested and spent, wall time split
                   into time inside the score function and the sampler's own time, and for
                   oracle problems the quality metrics below (atomic write)

Quality against the exact target (oracle problems; `sde_gen.metrics` defines each distance):
    sliced W2 to a fresh exact sample of the same size, and its ratio to the noise floor, the same
    distance between two independent exact samples (mean and std over replicates), with the same
    projection directions; the mode-weight error for mixtures (with its floor); for a single
    Gaussian the Bures-Wasserstein error of the sample moments (with its floor) and the prior
    mismatch: W2(p_T, prior) between the true marginal at T and the prior N(0, prior_std^2 I),
    and the error that mismatch leaves at t = 0 through the exact probability-flow map, which
    for Gaussian data N(m, U diag(lambda) U^T) is affine per eigen-direction:
        x_0 = m + U diag(sqrt(lambda / v_T)) U^T (x_T - a_T m),   v_T = a_T^2 lambda + s_T^2
    (Song et al. 2021, eq. 13 with the exact score), so a perfect ODE solver started from the
    prior produces N(m - U D U^T a_T m, prior_std^2 U D^2 U^T), D = diag(sqrt(lambda / v_T)).

Timing: the score function is wrapped by `TimedScore`; on CUDA it records events around each
call and synchronises only at the start and end of sampling, so the split costs no host syncs.

Run `sde-gen-sample --help` for the options; `sde-gen-report DIR` aggregates a multirun.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from .config import SampleAppConf, instantiate, register_configs, resolve_device, to_plain, validate
from .io import atomic_path, atomic_save_figure, atomic_write_text
from .metrics import bures_wasserstein, gaussian_w2_to_target, mode_weight_error, noise_floor, sliced_wasserstein
from .oracles import GaussianMixture, make_preset

log = logging.getLogger(__name__)

__all__ = [
    "TimedScore",
    "timed_sample",
    "oracle_metrics",
    "prior_mismatch",
    "save_picture",
    "run",
    "main",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TimedScore:
    """Wraps `score_fn`, counting calls and accumulating the time spent inside it.

    On CUDA each call is bracketed by two recorded events (no host synchronisation); `seconds()`
    sums their elapsed times and must be called after a `torch.cuda.synchronize()`. On other
    devices it uses `time.perf_counter` around the call (the computation is synchronous there).
    """

    def __init__(self, score_fn: ScoreFn, device: torch.device):
        self.score_fn = score_fn
        self.cuda = torch.device(device).type == "cuda"
        self.calls = 0
        self._seconds = 0.0
        self._events: List[Tuple[Any, Any]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.score_fn(x, t)
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.score_fn(x, t)
        self._seconds += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        """Total seconds inside the score function so far (synchronise CUDA first)."""
        if self.cuda:
            self._seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self._events = []
        return self._seconds


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_sample(
    sampler,
    sde,
    score_fn: ScoreFn,
    shape: Optional[Sequence[int]] = None,
    x_T: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Any, Dict[str, float]]:
    """Run `sampler` once and time it.

    Returns:
        `(SampleResult, timing)` with timing = {"total_s", "score_s", "sampler_s", "score_calls"};
        sampler_s = total_s - score_s is the sampler's own time (grid, arithmetic, noise).
    """
    dev = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    timed = TimedScore(score_fn, dev)
    _sync(dev)
    t0 = time.perf_counter()
    result = sampler(sde, timed, shape=shape, x_T=x_T, generator=generator, device=device, dtype=dtype)
    _sync(dev)
    total = time.perf_counter() - t0
    score_s = timed.seconds()
    return result, {"total_s": total, "score_s": score_s, "sampler_s": total - score_s, "score_calls": timed.calls}


# ---- metrics against an oracle ----
def prior_mismatch(oracle: GaussianMixture, sde) -> Dict[str, float]:
    """Closed-form prior mismatch for a single-Gaussian target (see the module docstring).

    Returns:
        {"w2_T": W2(p_T, prior), "w2_0_ode": W2 at t = 0 of the exact probability-flow map
        started from the prior instead of p_T}.
    """
    if oracle.num_components != 1:
        raise ValueError(f"prior_mismatch needs a single Gaussian (num_components=1); got {oracle.num_components}")
    D = oracle.dim
    eye = torch.eye(D, dtype=torch.float64)
    p_T = oracle.perturbed(sde, sde.T)
    prior_var = float(sde.prior_std) ** 2
    w2_T = bures_wasserstein(p_T.mean(), p_T.covariance(), torch.zeros(D, dtype=torch.float64), prior_var * eye)
    a_T, s_T = (float(c) for c in sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64)))
    m, cov = oracle.mean(), oracle.covariance()
    lam, U = torch.linalg.eigh(cov)
    d = torch.sqrt(lam / (a_T ** 2 * lam + s_T ** 2))
    flow = (U * d) @ U.T  # U diag(d) U^T
    mean_out = m - a_T * (flow @ m)
    cov_out = prior_var * (U * d ** 2) @ U.T
    w2_0 = bures_wasserstein(mean_out, cov_out, m, cov)
    return {"w2_T": float(w2_T), "w2_0_ode": float(w2_0)}


def oracle_metrics(
    samples: torch.Tensor,
    oracle: GaussianMixture,
    sde=None,
    num_projections: int = 500,
    replicates: int = 10,
    seed: int = 12345,
    floor_cache: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Quality of `samples` (N, D) against the exact distribution `oracle`, with noise floors.

    Sliced W2 uses the same `num_projections` directions (seeded by `seed`) for the sample and
    every floor replicate, against fresh exact data of the same size N drawn from `seed + 1`.

    Pass the same dict as `floor_cache` to calls with the same oracle, size and seeds to compute
    the noise floors once (they do not depend on the samples).

    Returns:
        A flat dict: sw2, sw2_floor_mean, sw2_floor_std, sw2_ratio; mode_weight_error and its
        floor for mixtures; bures_wasserstein, its floor and ratio, and prior_mismatch_w2_T /
        prior_mismatch_w2_0_ode (when `sde` is given) for a single Gaussian.
    """
    x = samples.detach().flatten(1).to(torch.float64)
    n, dev = x.shape[0], x.device
    oracle = oracle.to(dev)
    proj_seed = seed

    def sw2(a, b):
        return sliced_wasserstein(a, b, num_projections, torch.Generator(dev).manual_seed(proj_seed))

    data_gen = torch.Generator(dev).manual_seed(seed + 1)

    def exact(k, g):
        return oracle.sample(k, g, device=dev, dtype=torch.float64)

    out: Dict[str, Any] = {"num_samples": n, "finite": bool(torch.isfinite(x).all())}
    if not out["finite"]:
        log.warning("samples contain non-finite values; metrics are computed on the finite rows")
        x = x[torch.isfinite(x).all(1)]
        if x.shape[0] < 2:
            return out
    fresh = exact(n, data_gen)
    out["sw2"] = float(sw2(x, fresh))
    key = (n, replicates, num_projections, seed, oracle.dim, oracle.num_components)
    floors = floor_cache.get(key) if floor_cache is not None else None
    if floors is None:
        floors = {}
        floor = noise_floor(exact, n, sw2, replicates, data_gen)
        floors["sw2_floor_mean"], floors["sw2_floor_std"] = floor["mean"], floor["std"]
        if oracle.num_components > 1:
            errs = torch.stack([mode_weight_error(exact(n, data_gen), oracle) for _ in range(replicates)])
            floors["mode_weight_floor_mean"], floors["mode_weight_floor_std"] = float(errs.mean()), float(errs.std())
        else:
            bw = torch.stack([gaussian_w2_to_target(exact(n, data_gen), oracle) for _ in range(replicates)])
            floors["bw_floor_mean"], floors["bw_floor_std"] = float(bw.mean()), float(bw.std())
        if floor_cache is not None:
            floor_cache[key] = floors
    out.update(floors)
    out["sw2_ratio"] = out["sw2"] / floors["sw2_floor_mean"]
    out["noise_floor_replicates"] = replicates
    if oracle.num_components > 1:
        out["mode_weight_error"] = float(mode_weight_error(x, oracle))
    else:
        out["bures_wasserstein"] = float(gaussian_w2_to_target(x, oracle))
        out["bw_ratio"] = out["bures_wasserstein"] / out["bw_floor_mean"]
        if sde is not None:
            # closed form on CPU copies: the caller's modules stay where they are
            pm = prior_mismatch(copy.deepcopy(oracle).cpu(), copy.deepcopy(sde).cpu())
            out["prior_mismatch_w2_T"], out["prior_mismatch_w2_0_ode"] = pm["w2_T"], pm["w2_0_ode"]
    return out


# ---- pictures ----
def save_picture(path: str, samples: torch.Tensor, reference: Optional[torch.Tensor] = None, title: str = "") -> None:
    """Write a picture of `samples` (N, *event), next to `reference` samples when given.

    2-D vectors: scatter plots side by side. Longer vectors: coordinates (0, 1), the top two
    principal directions of the reference (or of the samples) and a histogram along the top one.
    Images (N, C, H, W): a grid of up to 64 images, each min-max scaled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ---- the app ----
_APP_GROUPS = ("sde", "sampler", "experiment", "hydra")


def _app_section(cfg: DictConfig) -> DictConfig:
    keys = [k for k in cfg.keys() if k not in _APP_GROUPS]
    return OmegaConf.create({k: cfg[k] for k in keys})


def _load_checkpoint_source(app: SampleAppConf, device: torch.device):
    """(sde, score_fn, event_shape, oracle or None, reference data or None) from a checkpoint.

    Isolated here: it only depends on `sde_gen.checkpoint.load_trained`, whose `Trained` record
    carries the EMA model (`model(x, t)` is the score), the SDE it was trained with and the dataset.
    """
    try:
        from .checkpoint import load_trained
    except ImportError as err:  # the training branch provides sde_gen.checkpoint
        raise RuntimeError("source=checkpoint needs sde_gen.checkpoint.load_trained (the training package)") from err
    if not os.path.exists(app.checkpoint):
        raise FileNotFoundError(f"checkpoint: no such file {app.checkpoint!r}")
    trained = load_trained(app.checkpoint, device=device, ema=app.ema)
    model = trained.model.eval()
    dataset = trained.dataset
    oracle = getattr(dataset, "oracle", None)
    reference = getattr(dataset, "test", None)
    event_shape = tuple(getattr(dataset, "event_shape"))
    return trained.sde.to(device), model, event_shape, oracle, reference


def run(cfg: DictConfig, out_dir: str, choices: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Sample according to `cfg` and write samples.pt, samples.png and metrics.json into `out_dir`.

    Every config value is checked (app section, sampler, SDE) before any work is done.

    Returns:
        The metrics dict written to metrics.json.
    """
    app: SampleAppConf = validate(_app_section(cfg), SampleAppConf, "sample")
    device = resolve_device(app.device)
    dtype = getattr(torch, app.dtype)
    sampler = instantiate(cfg.sampler, "sampler")
    choices = dict(choices or {})
    sampler_name = choices.get("sampler") or getattr(sampler, "name", type(sampler).__name__)

    if app.source == "oracle":
        sde = instantiate(cfg.sde, "sde").to(device)
        oracle = make_preset(app.problem).to(device)
        score_fn, event_shape, reference = oracle.score_fn(sde), (oracle.dim,), None
        sde_name = choices.get("sde") or type(sde).__name__
        problem = app.problem
    else:
        sde, score_fn, event_shape, oracle, reference = _load_checkpoint_source(app, device)
        sde_name = type(sde).__name__ + " (from checkpoint)"
        problem = os.path.basename(app.checkpoint)
    if hasattr(sampler, "check_sde"):
        sampler.check_sde(sde)
    log.info("sampling %d x %s with %r on %s (%s, %s)", app.num_samples, event_shape, sampler, problem, sde_name, device)

    generator = torch.Generator(device).manual_seed(app.seed)
    batch = app.num_samples if app.batch_size == 0 else min(app.batch_size, app.num_samples)
    chunks, timing = [], {"total_s": 0.0, "score_s": 0.0, "sampler_s": 0.0, "score_calls": 0}
    nfe_per_batch, steps = [], None
    done = 0
    while done < app.num_samples:
        b = min(batch, app.num_samples - done)
        result, tm = timed_sample(sampler, sde, score_fn, shape=(b, *event_shape), generator=generator, device=device, dtype=dtype)
        for k in timing:
            timing[k] += tm[k]
        nfe_per_batch.append(result.nfe)
        steps = result.num_steps
        chunks.append(result.samples)
        done += b
    samples = torch.cat(chunks)

    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "samples.pt")) as tmp:
        torch.save(samples.detach().cpu(), tmp)

    options = {k: v for k, v in to_plain(cfg.sampler).items() if k != "_target_"}
    metrics: Dict[str, Any] = {
        "source": app.source,
        "problem": problem,
        "sde": sde_name,
        "sampler": sampler_name,
        "sampler_options": options,
        "nfe_requested": int(getattr(sampler, "nfe", options.get("nfe", -1))),
        "nfe_spent": sum(nfe_per_batch) / len(nfe_per_batch),
        "score_calls": timing["score_calls"],
        "num_batches": len(nfe_per_batch),
        "num_steps": steps,
        "num_samples": app.num_samples,
        "seed": app.seed,
        "device": str(device),
        "dtype": app.dtype,
        "time_total_s": timing["total_s"],
        "time_score_s": timing["score_s"],
        "time_sampler_s": timing["sampler_s"],
        "sampler_time_fraction": timing["sampler_s"] / timing["total_s"] if timing["total_s"] > 0 else float("nan"),
    }
    if oracle is not None:
        metrics.update(
            oracle_metrics(samples, oracle, sde, app.num_projections, app.noise_floor_replicates, app.metrics_seed)
        )
        if reference is None:
            ref_gen = torch.Generator(device).manual_seed(app.metrics_seed + 2)
            reference = oracle.sample(min(app.num_samples, 5000), ref_gen, device=device, dtype=torch.float64)
    elif reference is not None and torch.is_tensor(reference):
        ref = reference[: app.num_samples].to(device)
        metrics["sw2_to_test"] = float(
            sliced_wasserstein(samples, ref, app.num_projections, torch.Generator(device).manual_seed(app.metrics_seed))
        )
    metrics["config"] = to_plain(_app_section(cfg))
    if app.plot:
        title = f"{problem} | {sde_name} | {sampler_name} NFE {metrics['nfe_spent']:g}"
        ref_img = reference if torch.is_tensor(reference) else None
        save_picture(os.path.join(out_dir, "samples.png"), samples, ref_img, title)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    summary = {k: metrics[k] for k in ("nfe_spent", "time_total_s", "sw2_ratio", "bw_ratio", "mode_weight_error") if k in metrics}
    log.info("metrics: %s", summary)
    return metrics


def _hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run(cfg, hc.runtime.output_dir, choices=dict(hc.runtime.choices))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-sample`; `argv` (without the program name) for in-process use."""
    import hydra

    register_configs()
    conf_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
    app = hydra.main(config_path=conf_dir, config_name="sample", version_base=None)(_hydra_entry)
    if argv is None:
        app()
        return
    saved = sys.argv
    sys.argv = [saved[0] if saved else "sde-gen-sample", *argv]
    try:
        app()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
