"""The sampling app `sde-gen-sample` (also `python -m sde_gen.sample`).

Draws samples with any registered sampler (`sampler=` is a Hydra config group) either from an
oracle problem with its exact score (`source=oracle problem=ring2d`) or from a training
checkpoint's EMA weights (`source=checkpoint checkpoint=PATH`), and writes into Hydra's run dir:

    samples.pt     the (N, *event) samples as one tensor (atomic write)
    labels.pt      class-conditional runs only: the (N,) requested class of each row (long)
    samples.png    a picture: a scatter against exact samples (2-D), 2-D projections and a
                   1-D marginal against exact samples (> 2-D vectors), an image grid (images);
                   class-conditional runs colour points by class and draw images one row per class
    metrics.json   the sampler and its options, the NFE requested and spent, wall time split
                   into time inside the score function and the sampler's own time, the fraction
                   of samples whose every coordinate is finite (`finite_fraction`), and for
                   oracle problems the quality metrics below, computed on the finite samples
                   (atomic write)

Class-conditional sampling (`sde_gen.guidance`): `label=` picks the classes (null: all, equal
shares; an int; a list), `guidance.kind=none|cfg|classifier` and `guidance.scale=s` the method:

    kind=none + label    plain conditional sampling: the oracle's exact class-conditional score,
                         or a class-conditional checkpoint at its label (an unconditional one is
                         refused: use kind=classifier)
    kind=cfg             classifier-free guidance on the oracle's exact conditional scores or a
                         class-conditional checkpoint (one forward of batch 2B per call for s not
                         in {0, 1})
    kind=classifier      the unconditional score plus s grad log p_t(y | x) of the oracle's exact
                         classifier, or of the classifier run named by `classifier=`

Their metrics.json adds `label` (as given), `label_counts` ({class: rows}), `num_classes`,
`guidance` {kind, scale}, `batch_cost` and `batch_equivalent_nfe` = nfe_spent x batch_cost (the
NFE counts network forwards, a 2B forward of classifier-free guidance being one), and for oracle
data (`source=oracle`, or a checkpoint trained on an oracle problem) `class_metrics`
(`sde_gen.evaluation.class_metrics`: class purity under the exact posterior, per-class sliced W2
against exact class samples with its noise floor). The unconditional metrics (sw2 against p_0,
mode weights) are left out there: the requested law is not p_0.

Every option that needs the source (a label in [0, C), a class-conditional checkpoint, a
classifier with the data's C classes trained under the same SDE) is checked after loading it and
before any sampling; a bad value is one error line, exit code 2.

Inverse problems (`task=inpaint|colorize|linear`, `inverse.*`; `sde_gen.inverse`): a true x_0 is
drawn from the oracle (`inverse.observation_seed`; for a checkpoint without an oracle, the test
example of that index) and observed, y = A x_0 + e; the sampler (a grid sampler) runs with the
conditioning method `inverse.method` on the unconditional score (the oracle's exact score or the
checkpoint's network). Besides samples.pt it writes observation.pt ({"y", "x_true", "A",
"noise_std", and "mask" for inpainting}); samples.png shows the samples next to exact posterior
samples (vectors: the unknown coordinates), or for images a grid whose first two images are the
observation A^+ y and the true image; where the data have an oracle, metrics.json
adds `inverse` (task, method, measurement, known count, noise_std) and the distance to the exact
posterior `GaussianMixture.condition` under the keys of unconditional runs (`bures_wasserstein`,
`bw_floor_mean`, `bw_ratio` for a Gaussian; `sw2`, `sw2_floor_mean`, `sw2_ratio` and the
mode-weight error for mixtures; `distance_to` says the target is the posterior), so `sde-gen-report`
tabulates them; and the observation residual ||y - A x|| (mean,
max, RMS per observed coordinate) and, for noise-free observations, the largest deviation of the
known part from the observation.

Image checkpoints with `feature_classifier=<classifier run>` (e.g. from `sde-gen-train
experiment=classifier_digits`): metrics.json adds `classifier_fd` (`sde_gen.metrics.frechet_distance`
between the samples and the test set in the classifier's penultimate features at t_min),
`classifier_fd_test_halves` (the same between two halves of the test set: the finite-sample level)
and `classifier_kid` / `classifier_kid_std` (`sde_gen.metrics.kid`). With `inception.weights=<path of
pt_inception-2015-12-05-6726825d.pth>` it adds `fid`, `kid`, `kid_std` in Inception-v3 features
against the test split (`sde_gen.inception.fid_kid`; reference statistics cached per data set, see
`fid_reference_cached`). A tqdm bar follows the sampler
step by step (`progress=true`, shown on a terminal only).

Precision and compilation (`sde_gen.precision`): `precision=bf16` (or `fp16`, CUDA only; refused on
the CPU in one line) runs each score call under `torch.autocast` and casts its output back, so the
time grid stays float64 and the sampler's state stays in `dtype`; `compile=true` compiles the
network once (`compile_backend`, eager fallback reported once) before any guidance wrapper is built
around it. metrics.json records `precision` and `compile`.

Batches and processes: the rows are cut into batches of `batch_size`; batch k draws from its own
generator (`sde_gen.distributed.batch_generator`). Under `torchrun --nproc_per_node=N -m
sde_gen.sample` each process draws a contiguous share of the batches and rank 0 gathers them and
writes everything; with the same `batch_size` the samples equal one process's (docs/gpu.md).

Quality against the exact target and the timing split: `sde_gen.evaluation`.

Run `sde-gen-sample --help` for the options; `sde-gen-report DIR` aggregates a multirun.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from .. import checkpoint as _checkpoint
from ..checkpoint import load_trained
from ..config import instantiate, resolve_device, to_plain, validate
from ..config_apps import SampleAppConf
from ..distributed import (DistInfo, batch_generator, finish_distributed, gather_to_main, init_distributed,
                           process_device, shard_range)
from ..evaluation import class_metrics, oracle_metrics, timed_sample
from ..guidance import classifier_free, classifier_guided
from ..inception import fid_kid, load_inception
from ..inverse import Colorization, Inpainting, LinearMeasurement, TweedieMoment, build_condition, mask_preset
from ..io import atomic_path, atomic_write_text
from ..metrics import classifier_features, frechet_distance, gaussian_w2_to_target, kid, noise_floor, sliced_wasserstein
from ..oracles import make_preset
from ..plots import save_picture
from ..precision import check_precision, compile_score, precision_score
from ..progress import StepProgress, progress_enabled
from ._hydra import hydra_app

log = logging.getLogger(__name__)

__all__ = ["run", "main", "class_labels"]


_APP_GROUPS = ("sde", "sampler", "experiment", "hydra")


def _app_section(cfg: DictConfig) -> DictConfig:
    keys = [k for k in cfg.keys() if k not in _APP_GROUPS]
    return OmegaConf.create({k: cfg[k] for k in keys})


@dataclasses.dataclass
class _Source:
    """Where the scores come from, with what class-conditional sampling needs of it."""

    sde: Any
    score_fn: Callable  # the unconditional score (x, t)
    conditional: Optional[Callable]  # model(x, t, y) with labels 0..C-1 and the no-label token C, or None
    num_classes: Optional[int]  # C of `conditional`, else of the labelled data, else None
    event_shape: Tuple[int, ...]
    oracle: Any
    reference: Any
    problem: str
    sde_name: str
    why_unconditional: str = ""  # why `conditional` is None (for the error lines)
    data_name: str = "reference"  # names the cached reference statistics of FID


def _oracle_source(app: SampleAppConf, cfg: DictConfig, device, choices: Dict[str, str]) -> _Source:
    sde = instantiate(cfg.sde, "sde").to(device)
    oracle = make_preset(app.problem).to(device)
    return _Source(sde, oracle.score_fn(sde), oracle.conditional_model(sde), oracle.num_classes, (oracle.dim,),
                   oracle, None, app.problem, choices.get("sde") or type(sde).__name__)


def _checkpoint_source(app: SampleAppConf, device) -> _Source:
    trained = load_trained(app.checkpoint, device=device, ema=app.ema, trusted_targets=app.trusted_targets)
    model = trained.model.eval()
    dataset = trained.dataset
    conditional = getattr(model, "num_classes", None)
    data_classes = getattr(dataset, "num_classes", None)
    why = ""
    if conditional is None:
        why = f"the model of checkpoint {trained.path!r} is unconditional (model.num_classes is null)"
    return _Source(
        trained.sde.to(device), model, model if conditional is not None else None,
        conditional if conditional is not None else data_classes,
        tuple(getattr(dataset, "event_shape")), getattr(dataset, "oracle", None), getattr(dataset, "test", None),
        os.path.basename(app.checkpoint), type(trained.sde).__name__ + " (from checkpoint)", why,
        str(getattr(dataset, "name", None) or type(dataset).__name__),
    )


def _load_classifier(path: str, device, ema: bool):
    """Load a noise-conditional classifier run: the ONE place the app reads a classifier.

    Returns:
        (classifier, sde): `classifier(x, t) -> (B, C) logits` with a `num_classes` attribute, and
        the SDE it was trained under.
    """
    trained = _checkpoint.load_classifier(path, device=device, ema=ema)
    model = trained.model.eval()
    if getattr(model, "num_classes", None) is None:
        model.num_classes = getattr(trained, "num_classes", None)
    return model, trained.sde.to(device)


def _compiled(app: SampleAppConf, src: _Source) -> _Source:
    """`compile=true`: the source's network (its unconditional and conditional score) compiled once,
    before any guidance wrapper is built around it, so every batch reuses the compiled graph."""
    if not app.compile:
        return src
    score_fn = compile_score(src.score_fn, app.compile_backend)
    conditional = src.conditional
    if conditional is src.score_fn:  # a conditional checkpoint: one network behind both
        conditional = score_fn
    elif conditional is not None:
        conditional = compile_score(conditional, app.compile_backend)
    return dataclasses.replace(src, score_fn=score_fn, conditional=conditional)


def _feature_classifier(app: SampleAppConf, src: "_Source", device):
    """The classifier whose penultimate features score image quality (`feature_classifier=`), or None.

    Checked before any sampling: it needs a checkpoint source with a test set to compare with, and
    must read inputs of the data's shape.
    """
    if app.feature_classifier is None:
        return None
    reference = src.reference
    if app.source != "checkpoint" or not torch.is_tensor(reference) or reference.ndim < 2:
        raise ValueError("feature_classifier needs source=checkpoint with a data set that has a test set (the "
                         f"distance compares the samples with it); got source={app.source}")
    classifier, _ = _load_classifier(app.feature_classifier, device, ema=True)
    try:
        classifier_features(classifier, reference[:2].to(device))
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"feature_classifier: the classifier run {app.feature_classifier!r} cannot read data of "
                         f"shape {tuple(reference.shape[1:])}: {err}") from None
    return classifier


def _inception_net(app: SampleAppConf, src: "_Source", device):
    """The FID Inception network (`inception.weights`), or None; checked before any sampling."""
    if app.inception.weights is None:
        return None
    reference = src.reference
    if app.source != "checkpoint" or not torch.is_tensor(reference) or reference.ndim != 4:
        raise ValueError("inception.weights (FID/KID) needs source=checkpoint with image data that have a test set; "
                         f"got source={app.source}" + ("" if app.source == "oracle" else " with non-image data"))
    return load_inception(app.inception.weights, device=device, resize=app.inception.resize)


def _inception_metrics(app: SampleAppConf, net, samples: torch.Tensor, src: "_Source") -> Dict[str, Any]:
    """FID / KID between the samples and the test split (reference statistics cached per data set)."""
    reference = src.reference if app.inception.reference_size is None else src.reference[: app.inception.reference_size]
    opts = app.inception
    return fid_kid(net, samples, reference, name=src.data_name, cache_dir=opts.cache_dir, batch_size=opts.batch_size,
                   generator=torch.Generator().manual_seed(app.metrics_seed))


def _feature_metrics(classifier, samples: torch.Tensor, test: torch.Tensor, seed: int, device) -> Dict[str, float]:
    """Frechet distance and KID between samples and the test set in the classifier's features.

    `classifier_fd_test_halves` is the same distance between two halves of the test set: what a
    perfect model scores at this set size (the distance is biased upwards at finite N).
    """
    f_s = classifier_features(classifier, samples)
    f_t = classifier_features(classifier, test)
    out = {"classifier_fd": float(frechet_distance(f_t, f_s)), "classifier_fd_features": int(f_s.shape[1])}
    half = f_t.shape[0] // 2
    if half >= 2:
        out["classifier_fd_test_halves"] = float(frechet_distance(f_t[:half], f_t[half:2 * half]))
    size = min(f_s.shape[0], f_t.shape[0], 1000)
    mean, std = kid(f_t, f_s, subsets=10, subset_size=size, generator=torch.Generator().manual_seed(seed))
    out.update(classifier_kid=float(mean), classifier_kid_std=float(std))
    return out


def _same_noise(a, b, device) -> bool:
    """Whether two SDEs perturb data alike: the same T and marginal coefficients a(t), s(t) on a grid.

    A classifier of x_t learnt under one SDE is meaningless under another, whatever its class.
    """
    if abs(float(a.T) - float(b.T)) > 1e-9 * max(1.0, float(a.T)):
        return False
    t = torch.linspace(0.0, float(a.T), 65, dtype=torch.float64, device=device)[1:]
    return all(torch.allclose(x.double(), y.double(), rtol=1e-6, atol=1e-9)
               for x, y in zip(a.marginal_coeffs(t), b.marginal_coeffs(t)))


def class_labels(label, num_classes: int, n: int, device=None) -> torch.Tensor:
    """The (n,) requested class of every sample, class by class.

    Args:
        label: None (every class 0..C-1), an int class, or a list of distinct classes.
        num_classes: C; every class must lie in [0, C).
        n: the number of samples.
        device: of the result.

    Returns:
        A long tensor: each requested class gets n // k rows (k classes requested) and the first
        n mod k classes, in the order requested, one more; the rows of a class are contiguous.

    Raises:
        ValueError naming `label` and the allowed range [0, C).
    """
    classes = list(range(num_classes)) if label is None else ([label] if isinstance(label, int) else list(label))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"label must lie in [0, {num_classes}) ({num_classes} classes); got {label!r}")
    k = len(classes)
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    return torch.repeat_interleave(torch.tensor(classes, dtype=torch.long), torch.tensor(counts)).to(device)


def _guided_score(app: SampleAppConf, src: _Source, device) -> Tuple[Optional[Callable], Optional[int]]:
    """(make, C): `make(labels)` builds the score for a chunk of requested labels; (None, None)
    for unconditional sampling. Every check needing the source runs here, before any sampling."""
    kind, scale = app.guidance.kind, app.guidance.scale
    if kind == "none" and app.label is None:
        return None, None
    if kind == "classifier":
        if src.num_classes is None:
            raise ValueError(f"guidance.kind=classifier needs labelled data to match the classifier's classes: "
                             f"the data of checkpoint {app.checkpoint!r} carry no class labels")
        if app.classifier:
            classifier, classifier_sde = _load_classifier(app.classifier, device, app.ema)
            if classifier.num_classes != src.num_classes:
                raise ValueError(f"classifier: the classifier run {app.classifier!r} has {classifier.num_classes} classes "
                                 f"but {src.problem} has {src.num_classes}; allowed: a classifier of the same labelled "
                                 f"data ({src.num_classes} classes)")
            if not _same_noise(classifier_sde, src.sde, device):
                raise ValueError(f"classifier: the classifier run {app.classifier!r} was trained under another SDE "
                                 f"({type(classifier_sde).__name__}, T={float(classifier_sde.T):g}) than the one "
                                 f"sampled ({src.sde_name}, T={float(src.sde.T):g}); allowed: a classifier trained "
                                 "with the same sde")
        else:  # the oracle's exact classifier (config_apps requires `classifier` for checkpoints)
            classifier = src.oracle.classifier(src.sde)
        C = src.num_classes
        return (lambda y: classifier_guided(src.score_fn, classifier, y, scale, num_classes=C)), C
    if src.conditional is None:
        what = "guidance.kind=cfg" if kind == "cfg" else f"label={app.label!r} with guidance.kind=none"
        raise ValueError(f"{what} needs a class-conditional model, "
                         f"but {src.why_unconditional}; allowed: guidance.kind=classifier with classifier=<classifier run>, "
                         "or a checkpoint trained with model.num_classes")
    C = src.num_classes
    s = scale if kind == "cfg" else 1.0  # kind none + label: plain conditional sampling
    return (lambda y: classifier_free(src.conditional, y, s, num_classes=C)), C


#: the step bar of the sampling loop (a name of this module, so tests can record it)
_StepProgress = StepProgress


def _progress(app, sampler, num_batches: int) -> _StepProgress:
    """The step bar of a run: total = steps per call x calls when the sampler has a fixed grid."""
    per_call = getattr(sampler, "num_steps", None)
    total = per_call * num_batches if isinstance(per_call, int) else None
    enabled = progress_enabled(app.progress)
    return _StepProgress(enabled, total, f"sample ({getattr(sampler, 'name', type(sampler).__name__)})")


def run(cfg: DictConfig, out_dir: str, choices: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Sample according to `cfg` and write samples.pt, samples.png and metrics.json into `out_dir`.

    Every config value is checked (app section, sampler, SDE) before any work is done.

    Under `torchrun --nproc_per_node=N` each process draws its share of the batches and rank 0
    gathers them, computes the metrics and writes the files (see `_sample_in_batches`).

    Returns:
        The metrics dict written to metrics.json (an empty dict on ranks other than 0).
    """
    app: SampleAppConf = validate(_app_section(cfg), SampleAppConf, "sample")
    device = resolve_device(app.device)
    check_precision(app.precision, device)  # fp16 off CUDA: one error before any work
    info = init_distributed(device)
    try:
        return _run(cfg, app, process_device(device, info), info, out_dir, dict(choices or {}))
    finally:
        finish_distributed(info)


def _run(cfg: DictConfig, app: SampleAppConf, device, info: DistInfo, out_dir: str, choices: Dict[str, str]):
    dtype = getattr(torch, app.dtype)
    discrete_sampler = _is_discrete_sampler(cfg.sampler)
    if discrete_sampler or (app.source == "checkpoint"
                            and _checkpoint.checkpoint_kind(app.checkpoint, app.trusted_targets) == "discrete"):
        return _run_discrete(app, cfg, device, out_dir, dict(choices or {}), discrete_sampler)
    sampler = instantiate(cfg.sampler, "sampler", check_finite=app.check_finite)
    sampler_name = choices.get("sampler") or getattr(sampler, "name", type(sampler).__name__)

    src = _oracle_source(app, cfg, device, choices) if app.source == "oracle" else _checkpoint_source(app, device)
    src = _compiled(app, src)
    if app.task != "sample":
        return _run_inverse(app, cfg, src, device, dtype, out_dir, sampler_name, info)
    sde, score_fn, event_shape, oracle, reference = src.sde, src.score_fn, src.event_shape, src.oracle, src.reference
    problem, sde_name = src.problem, src.sde_name
    if hasattr(sampler, "check_sde"):
        sampler.check_sde(sde)
    make_guided, num_classes = _guided_score(app, src, device)
    feature_clf = _feature_classifier(app, src, device)
    inception = _inception_net(app, src, device)
    # the requested class of every row, built once for the whole run; each batch takes its slice
    labels = None if make_guided is None else class_labels(app.label, num_classes, app.num_samples, device)
    log.info("sampling %d x %s with %r on %s (%s, %s)", app.num_samples, event_shape, sampler, problem, sde_name, device)

    def score_for(start: int, stop: int):
        score = score_fn if make_guided is None else make_guided(labels[start:stop])
        return precision_score(score, app.precision, device)

    run = _sample_in_batches(app, sampler, sde, score_for, event_shape, device, dtype, info)
    if run is None:  # a rank other than 0: its samples went to rank 0, which writes everything
        return {}
    samples, timing, nfe_per_batch, steps = run["samples"], run["timing"], run["nfe_per_batch"], run["steps"]
    num_nonfinite, batch_cost = run["num_nonfinite"], run["batch_cost"]

    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "samples.pt")) as tmp:
        torch.save(samples.detach().cpu(), tmp)
    if labels is not None:
        with atomic_path(os.path.join(out_dir, "labels.pt")) as tmp:
            torch.save(labels.cpu(), tmp)

    options = {k: v for k, v in to_plain(cfg.sampler).items() if k != "_target_"}
    options["check_finite"] = app.check_finite
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
        "precision": app.precision,
        "compile": app.compile,
        "num_processes": info.world_size,
        "time_wall_s": timing["wall_s"],
        "time_total_s": timing["total_s"],
        "time_score_s": timing["score_s"],
        "time_sampler_s": timing["sampler_s"],
        "sampler_time_fraction": timing["sampler_s"] / timing["total_s"] if timing["total_s"] > 0 else float("nan"),
        "guidance": {"kind": app.guidance.kind, "scale": app.guidance.scale},
        # a sampler's NFE counts score calls, each one network forward (of batch 2B for
        # classifier-free guidance at s not in {0, 1}); in forwards of batch B it costs batch_cost x that
        "batch_cost": batch_cost,
        "batch_equivalent_nfe": batch_cost * sum(nfe_per_batch) / len(nfe_per_batch),
    }
    if labels is not None:
        counts = torch.bincount(labels, minlength=num_classes).tolist()
        metrics.update(label=app.label, num_classes=num_classes,
                       label_counts={str(c): k for c, k in enumerate(counts) if k > 0})
    # A sampler can diverge on some rows (a stiff step, a bad network): the metrics and the picture
    # use the rows whose every coordinate is finite, and say how many were left out.
    finite_rows = torch.isfinite(samples.flatten(1)).all(1)
    finite = samples[finite_rows]
    num_finite = int(finite.shape[0])
    metrics["num_finite"] = num_finite
    if app.check_finite:  # rows that were non-finite at any point of sampling (x_T, states, scores)
        metrics["num_nonfinite"] = num_nonfinite
    metrics["finite_fraction"] = num_finite / app.num_samples
    if num_finite < app.num_samples:
        log.warning("%d of %d samples have non-finite coordinates; metrics and picture use the %d finite ones",
                    app.num_samples - num_finite, app.num_samples, num_finite)
    if feature_clf is not None and num_finite >= 2:
        metrics.update(_feature_metrics(feature_clf, finite, reference.to(device), app.metrics_seed, device))
    if inception is not None and num_finite >= 2:
        metrics.update(_inception_metrics(app, inception, finite, src))
    ref_labels = None
    if oracle is not None and labels is not None:
        # requested classes: quality per class against the exact class-conditional laws (the
        # unconditional metrics would compare with p_0, which is not the law asked for)
        per = class_metrics(samples, labels, oracle, app.num_projections, app.noise_floor_replicates, app.metrics_seed)
        per["per_class"] = {str(c): row for c, row in per["per_class"].items()}  # as JSON writes them
        metrics["class_metrics"] = per
        stride = -(-app.num_samples // 5000)  # at most 5000 exact points in the picture, every class kept
        ref_labels = labels[::stride]
        ref_gen = torch.Generator(device).manual_seed(app.metrics_seed + 2)
        reference = oracle.sample(ref_labels.shape[0], ref_gen, device=device, dtype=torch.float64, y=ref_labels)
    elif oracle is not None:
        if num_finite >= 2:  # a distance between sample sets needs at least two points
            metrics.update(
                oracle_metrics(finite, oracle, sde, app.num_projections, app.noise_floor_replicates, app.metrics_seed)
            )
        if reference is None:
            ref_gen = torch.Generator(device).manual_seed(app.metrics_seed + 2)
            reference = oracle.sample(min(app.num_samples, 5000), ref_gen, device=device, dtype=torch.float64)
    elif reference is not None and torch.is_tensor(reference) and num_finite >= 2 and labels is None:
        ref = reference[: app.num_samples].to(device)
        metrics["sw2_to_test"] = float(
            sliced_wasserstein(finite, ref, app.num_projections, torch.Generator(device).manual_seed(app.metrics_seed))
        )
    # oracle_metrics describes the rows it was given; these keys describe every sample drawn
    metrics["num_samples"] = app.num_samples
    metrics["finite"] = num_finite == app.num_samples
    metrics["config"] = to_plain(_app_section(cfg))
    if app.plot:
        title = f"{problem} | {sde_name} | {sampler_name} NFE {metrics['nfe_spent']:g}"
        if labels is not None:
            title += f" | {app.guidance.kind} s={app.guidance.scale:g}" if app.guidance.kind != "none" else " | conditional"
        if num_finite < app.num_samples:
            title += f" | {app.num_samples - num_finite} of {app.num_samples} non-finite samples not shown"
        if num_finite == 0:
            log.warning("no finite sample to draw; %s not written", os.path.join(out_dir, "samples.png"))
        else:
            ref_img = reference if torch.is_tensor(reference) else None
            if labels is None:
                save_picture(os.path.join(out_dir, "samples.png"), finite, ref_img, title)
            else:  # points coloured by class, images one row per class
                if ref_img is not None and ref_labels is None:
                    ref_img = None  # a checkpoint's test data are not the requested classes
                save_picture(os.path.join(out_dir, "samples.png"), finite, ref_img, title,
                             labels=labels[finite_rows], reference_labels=ref_labels)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    summary = {k: metrics[k] for k in ("nfe_spent", "time_total_s", "sw2_ratio", "bw_ratio", "mode_weight_error") if k in metrics}
    if "class_metrics" in metrics:
        summary.update({k: metrics["class_metrics"][k] for k in ("class_purity", "sw2_ratio_max") if k in metrics["class_metrics"]})
    log.info("metrics: %s", summary)
    return metrics


def _is_discrete_sampler(node: DictConfig) -> bool:
    from ..config import target_names
    from ..discrete.samplers import DISCRETE_SAMPLERS

    return node.get("_target_") in {n for cls in DISCRETE_SAMPLERS.values() for n in target_names(cls)}


def _run_discrete(app: SampleAppConf, cfg: DictConfig, device, out_dir: str, choices: Dict[str, str],
                  discrete_sampler: bool) -> Dict[str, Any]:
    """Samples of a discrete-diffusion checkpoint (`sde_gen.discrete`): samples.pt (long token ids),
    samples.png (a grid of the first 64) and metrics.json (NFE, wall time, marginal TV to the test set
    next to the training set's, the samples' exact NLL for data with an exact likelihood).

    Every check runs before any sampling: a discrete sampler needs a discrete checkpoint and the
    other way round; labels, guidance, inverse tasks and feature metrics are continuous-only."""
    from ..discrete.evaluation import plot_token_grid, sample_report

    sampler_name = choices.get("sampler") or cfg.sampler.get("_target_")
    if app.source != "checkpoint":
        raise ValueError(f"sampler={sampler_name} is a discrete sampler: it needs source=checkpoint with a discrete-diffusion "
                         "run (e.g. sde-gen-train experiment=d3pm_digits_absorbing); the oracle problems are continuous")
    if not discrete_sampler:
        raise ValueError(f"checkpoint {app.checkpoint!r} holds a discrete-diffusion model: use a discrete sampler, "
                         f"sampler=d3pm_ancestral or sampler=maskgit (got sampler={sampler_name})")
    if app.label is not None or app.guidance.kind != "none" or app.task != "sample" or app.feature_classifier is not None:
        raise ValueError("label, guidance.kind, task and feature_classifier apply to continuous models only; a "
                         "discrete-diffusion checkpoint samples unconditionally (leave them at their defaults)")
    if _checkpoint.checkpoint_kind(app.checkpoint, app.trusted_targets) != "discrete":
        raise ValueError(f"sampler={sampler_name} is a discrete sampler but checkpoint {app.checkpoint!r} holds a continuous "
                         "model; use a continuous sampler (e.g. sampler=euler_maruyama)")
    sampler = instantiate(cfg.sampler, "sampler")
    trained = _checkpoint.load_discrete(app.checkpoint, device=device, ema=app.ema)
    process, model, data = trained.sde, trained.model, trained.dataset
    sampler.check_process(process)
    event_shape = tuple(data.event_shape)
    log.info("sampling %d x %s with %r from %s (%r, %s)", app.num_samples, event_shape, sampler, trained.path, process, device)
    generator = torch.Generator(device).manual_seed(app.seed)
    batch = app.batch_size or app.num_samples
    parts, nfe_per_batch = [], []
    t0 = time.perf_counter()
    for start in range(0, app.num_samples, batch):
        b = min(batch, app.num_samples - start)
        res = sampler(process, model, shape=(b, *event_shape), generator=generator, device=device)
        parts.append(res.samples)
        nfe_per_batch.append(res.nfe)
    seconds = time.perf_counter() - t0
    samples = torch.cat(parts).cpu()
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "samples.pt")) as tmp:
        torch.save(samples, tmp)
    options = {k: v for k, v in to_plain(cfg.sampler).items() if k != "_target_"}
    metrics: Dict[str, Any] = {
        "source": app.source, "checkpoint": os.path.abspath(trained.path), "step": trained.step,
        "problem": data.name, "sde": type(process).__name__, "num_classes": process.num_classes,
        "num_timesteps": process.T, "sampler": sampler_name, "sampler_options": options,
        "nfe_requested": int(sampler.nfe), "nfe_spent": sum(nfe_per_batch) / len(nfe_per_batch),
        "num_batches": len(nfe_per_batch), "num_samples": app.num_samples, "seed": app.seed, "device": str(device),
        "time_total_s": seconds,
    }
    metrics.update(sample_report(samples, data))
    metrics["config"] = to_plain(_app_section(cfg))
    if app.plot:
        plot_token_grid(samples, data.num_levels, os.path.join(out_dir, "samples.png"),
                        f"{data.name} | {type(process).__name__} T={process.T} | {sampler_name} NFE {metrics['nfe_spent']:g}")
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("metrics: %s", {k: metrics[k] for k in ("nfe_spent", "time_total_s", "marginal_tv", "marginal_tv_train")})
    return metrics


def _measurement(app: SampleAppConf, event_shape: Tuple[int, ...], generator: torch.Generator) -> LinearMeasurement:
    """The measurement of `app.task` for data of `event_shape` (every check before any sampling)."""
    inv, D = app.inverse, int(torch.Size(event_shape).numel())
    if app.task == "inpaint":
        return Inpainting(mask_preset(inv.mask, event_shape, inv.missing, generator), noise_std=inv.noise_std)
    if app.task == "colorize":
        if len(event_shape) < 2 or event_shape[0] != 3:
            raise ValueError(f"task=colorize needs data with 3 colour channels first, event shape (3, H, W); "
                             f"{app.problem} has event shape {tuple(event_shape)} (allowed tasks for it: inpaint, linear)")
        return Colorization(event_shape, noise_std=inv.noise_std)
    m = inv.num_observations if inv.num_observations is not None else max(D // 2, 1)
    if m > D and inv.noise_std == 0:
        raise ValueError(f"inverse.num_observations must be <= D = {D} for a noise-free task=linear (A must have full "
                         f"row rank); got {m}")
    return LinearMeasurement.random_projection(D, m, inv.noise_std, generator)


def _sample_in_batches(app, sampler, sde, score_for, event_shape, device, dtype, info: DistInfo) -> Optional[dict]:
    """Draw `app.num_samples` samples in batches, this process's share of them, gathered on rank 0.

    The rows are cut into batches of `app.batch_size` (0: one batch, or under torchrun one batch
    per process); batch k draws from `batch_generator(seed, k)` and the batches are dealt to the
    processes in contiguous shares (`shard_range`), so with the same batch size every process count
    gives the samples one process gives. `score_for(start, stop)` gives the score function of rows
    [start, stop) (a guided score carries its `batch_cost`). Returns, on rank 0, the samples, the
    timing of `timed_sample` summed over batches and processes (and `wall_s`, the slowest
    process's total), the NFE of each batch, the steps of the last batch, the non-finite rows
    counted by the sampler and the batch cost; None on the other ranks.
    """
    n = app.num_samples
    batch = app.batch_size if app.batch_size else -(-n // info.world_size)
    batch = min(batch, n)
    num_batches = -(-n // batch)
    mine = shard_range(num_batches, info.rank, info.world_size)
    chunks, nfe_per_batch, steps, num_nonfinite, batch_cost = [], [], None, 0, 1
    timing = {"total_s": 0.0, "score_s": 0.0, "sampler_s": 0.0, "score_calls": 0}
    bar = _progress(app if info.is_main else dataclasses.replace(app, progress=False), sampler, len(mine))
    for k in mine:
        start, stop = k * batch, min((k + 1) * batch, n)
        score = score_for(start, stop)
        batch_cost = getattr(score, "batch_cost", batch_cost)
        result, tm = timed_sample(sampler, sde, score, shape=(stop - start, *event_shape),
                                  generator=batch_generator(app.seed, k, device), device=device, dtype=dtype,
                                  callback=bar.callback)
        for key in timing:
            timing[key] += tm[key]
        nfe_per_batch.append(result.nfe)
        steps = result.num_steps
        num_nonfinite += result.num_nonfinite or 0
        chunks.append(result.samples)
    bar.close()
    part = {"samples": torch.cat(chunks) if chunks else None, "timing": timing, "nfe_per_batch": nfe_per_batch,
            "steps": steps, "num_nonfinite": num_nonfinite, "batch_cost": batch_cost}
    if not info.active:
        part["timing"]["wall_s"] = timing["total_s"]
        return part
    cpu = dict(part, samples=None if part["samples"] is None else part["samples"].cpu())
    parts = gather_to_main(cpu, info)
    if parts is None:
        return None
    parts = [p for p in parts if p["samples"] is not None]  # ranks beyond the batch count drew nothing
    out = {"samples": torch.cat([p["samples"] for p in parts]).to(device),
           "timing": {key: sum(p["timing"][key] for p in parts) for key in timing},
           "nfe_per_batch": [nfe for p in parts for nfe in p["nfe_per_batch"]], "steps": parts[-1]["steps"],
           "num_nonfinite": sum(p["num_nonfinite"] for p in parts), "batch_cost": parts[0]["batch_cost"]}
    out["timing"]["wall_s"] = max(p["timing"]["total_s"] for p in parts)
    return out


def _run_inverse(app: SampleAppConf, cfg: DictConfig, src: _Source, device, dtype, out_dir: str,
                 sampler_name: str, info: DistInfo) -> Dict[str, Any]:
    """task=inpaint|colorize|linear: sample p(x | y) with a conditioning method and compare with
    the exact posterior (see the module docstring)."""
    inv, oracle, sde, event_shape = app.inverse, src.oracle, src.sde, src.event_shape
    if oracle is None and inv.method == "exact_conditional":
        raise ValueError(f"inverse.method=exact_conditional needs the exact posterior, which only oracle data have; "
                         f"{src.problem} has none (allowed: replacement, repaint, dps, tweedie_moment)")
    obs_gen = torch.Generator().manual_seed(inv.observation_seed)  # on the CPU: the same y on every device
    meas = _measurement(app, event_shape, obs_gen)
    if oracle is not None:
        x_true = oracle.sample(1, obs_gen, device="cpu", dtype=torch.float64).reshape(1, *event_shape)
    elif torch.is_tensor(src.reference) and src.reference.shape[0] > 0:
        x_true = src.reference[inv.observation_seed % src.reference.shape[0]][None].to("cpu", torch.float64)
    else:
        raise ValueError(f"task={app.task} needs data to observe: {src.problem} has neither an oracle nor test data")
    y = meas.observe(x_true, obs_gen)[0]
    posterior = None if oracle is None else oracle.condition(meas, y.to(oracle.means.device)).to(device)
    options = {"covariance": inv.covariance, "cg_iters": inv.cg_iters} if inv.method == TweedieMoment.name else {}
    condition = build_condition(inv.method, meas, y, oracle=oracle, **options)
    sampler = instantiate(cfg.sampler, "sampler", check_finite=app.check_finite, condition=condition)
    if hasattr(sampler, "check_sde"):
        sampler.check_sde(sde)
    log.info("%s with %s (%r) on %s: %r", app.task, inv.method, sampler, src.problem, meas)

    score = precision_score(src.score_fn, app.precision, device)
    run = _sample_in_batches(app, sampler, sde, lambda start, stop: score, event_shape, device, dtype, info)
    if run is None:
        return {}
    samples, timing, nfe_per_batch, steps = run["samples"], run["timing"], run["nfe_per_batch"], run["steps"]

    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "samples.pt")) as tmp:
        torch.save(samples.detach().cpu(), tmp)
    observation = {"y": y, "x_true": x_true, "A": meas.matrix(), "noise_std": meas.noise_std}
    if isinstance(meas, Inpainting):
        observation["mask"] = meas.mask
    with atomic_path(os.path.join(out_dir, "observation.pt")) as tmp:
        torch.save(observation, tmp)

    flat = samples.detach().flatten(1).to(torch.float64)
    finite = flat[torch.isfinite(flat).all(1)]
    n = int(finite.shape[0])
    y_dev = y.to(device)
    metrics: Dict[str, Any] = {
        "source": app.source, "problem": src.problem, "sde": src.sde_name, "sampler": sampler_name,
        "task": app.task,
        "inverse": {"method": inv.method, "condition": repr(condition), "measurement": repr(meas), "num_observations": meas.num_observations,
                    "num_known": meas.num_known, "dim": meas.dim, "noise_std": meas.noise_std,
                    "mask": inv.mask if app.task == "inpaint" else None, "observation_seed": inv.observation_seed},
        "nfe_requested": int(sampler.nfe), "nfe_spent": sum(nfe_per_batch) / len(nfe_per_batch),
        "num_steps": steps, "num_samples": app.num_samples, "num_finite": n, "seed": app.seed,
        "device": str(device), "dtype": app.dtype, "time_total_s": timing["total_s"],
        "time_score_s": timing["score_s"], "time_sampler_s": timing["sampler_s"],
    }
    if app.check_finite:
        metrics["num_nonfinite"] = run["num_nonfinite"]
    if n >= 2:
        residual = meas.residual(finite, y_dev.to(torch.float64))
        metrics["residual_mean"] = float(residual.mean())
        metrics["residual_max"] = float(residual.max())
        metrics["residual_rms_per_observation"] = float(residual.pow(2).mean().div(meas.num_observations).sqrt())
        if meas.noise_std == 0:
            known = meas.known_from_observation(y_dev.to(torch.float64)[None])
            metrics["known_max_abs_error"] = float((meas.split(finite)[0] - known).abs().max())
    if n >= 2 and posterior is not None:
        exact = lambda k, g: posterior.sample(k, g, device=device, dtype=torch.float64)  # noqa: E731
        floor_gen = torch.Generator(device).manual_seed(app.metrics_seed)
        if oracle.num_components == 1:
            dist = lambda a, b: gaussian_w2_to_target(a, posterior)  # noqa: E731
            name, short = "bures_wasserstein", "bw"
        else:
            dist = lambda a, b: sliced_wasserstein(  # noqa: E731
                a, b, app.num_projections, torch.Generator(device).manual_seed(app.metrics_seed))
            name = short = "sw2"
            labels = oracle.component_log_posterior(finite).argmax(1)  # p(k | x, y) = p(k | x): y depends on x only
            freq = torch.bincount(labels, minlength=oracle.num_components).to(torch.float64) / n
            metrics["mode_weight_error"] = float(0.5 * (freq - posterior.weights).abs().sum())
        value = float(dist(finite, exact(n, floor_gen)))
        floor = noise_floor(exact, n, dist, replicates=app.noise_floor_replicates, generator=floor_gen)
        # the keys of the unconditional runs (so sde-gen-report tabulates both), measured against the posterior
        metrics.update({"distance_to": "exact posterior", name: value, f"{short}_floor_mean": floor["mean"],
                        f"{short}_floor_std": floor["std"], f"{short}_ratio": value / floor["mean"],
                        "noise_floor_replicates": app.noise_floor_replicates})
    metrics["finite"] = n == app.num_samples
    metrics["config"] = to_plain(_app_section(cfg))
    if app.plot and n > 0:
        title = f"{src.problem} | {app.task} {inv.method} | {sampler_name} NFE {metrics['nfe_spent']:g}"
        ref = None if posterior is None else posterior.sample(
            min(app.num_samples, 5000), torch.Generator(device).manual_seed(app.metrics_seed + 2), device=device,
            dtype=torch.float64)
        if len(event_shape) == 1:  # vectors: the unknown coordinates (the known ones are y itself)
            shown, ref_shown = meas.split(finite)[1], None if ref is None else meas.split(ref)[1]
            title += " | unknown coordinates"
        else:  # images: the observation (A^+ y, unknown part 0) and the truth, then the samples
            seen = meas.replace_known(torch.zeros_like(x_true), meas.known_from_observation(y[None]))
            shown, ref_shown = torch.cat([seen, x_true, finite.reshape(-1, *event_shape)[:62].cpu()]), None
            title += " | first: observation, second: truth"
        save_picture(os.path.join(out_dir, "samples.png"), shown, ref_shown, title)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("metrics: %s", {k: metrics[k] for k in metrics if k.endswith("_ratio") or k.startswith("residual")})
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-sample`; `argv` (overrides) for in-process use."""
    hydra_app("sample", run, argv)


if __name__ == "__main__":
    main()
