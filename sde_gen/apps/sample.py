"""The sampling app `sde-gen-sample` (also `python -m sde_gen.sample`).

Draws samples with any registered sampler (`sampler=` is a Hydra config group) either from an
oracle problem with its exact score (`source=oracle problem=ring2d`) or from a training
checkpoint's EMA weights (`source=checkpoint checkpoint=PATH`), and writes into Hydra's run dir:

    samples.pt     the (N, *event) samples as one tensor (atomic write)
    samples.png    a picture: a scatter against exact samples (2-D), 2-D projections and a
                   1-D marginal against exact samples (> 2-D vectors), an image grid (images)
    metrics.json   the sampler and its options, the NFE requested and spent, wall time split
                   into time inside the score function and the sampler's own time, the fraction
                   of samples whose every coordinate is finite (`finite_fraction`), and for
                   oracle problems the quality metrics below, computed on the finite samples
                   (atomic write)

Quality against the exact target and the timing split: `sde_gen.evaluation`.

Run `sde-gen-sample --help` for the options; `sde-gen-report DIR` aggregates a multirun.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import load_trained
from ..config import instantiate, resolve_device, to_plain, validate
from ..config_apps import SampleAppConf
from ..evaluation import oracle_metrics, timed_sample
from ..io import atomic_path, atomic_write_text
from ..metrics import sliced_wasserstein
from ..oracles import make_preset
from ..plots import save_picture
from ._hydra import hydra_app

log = logging.getLogger(__name__)

__all__ = ["run", "main"]


_APP_GROUPS = ("sde", "sampler", "experiment", "hydra")


def _app_section(cfg: DictConfig) -> DictConfig:
    keys = [k for k in cfg.keys() if k not in _APP_GROUPS]
    return OmegaConf.create({k: cfg[k] for k in keys})


def _load_checkpoint_source(app: SampleAppConf, device: torch.device):
    """(sde, score_fn, event_shape, oracle or None, reference data or None) from a checkpoint."""
    trained = load_trained(app.checkpoint, device=device, ema=app.ema, trusted_targets=app.trusted_targets)
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
    sampler = instantiate(cfg.sampler, "sampler", check_finite=app.check_finite)
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
    nfe_per_batch, steps, num_nonfinite = [], None, 0
    done = 0
    while done < app.num_samples:
        b = min(batch, app.num_samples - done)
        result, tm = timed_sample(sampler, sde, score_fn, shape=(b, *event_shape), generator=generator, device=device, dtype=dtype)
        for k in timing:
            timing[k] += tm[k]
        nfe_per_batch.append(result.nfe)
        steps = result.num_steps
        num_nonfinite += result.num_nonfinite or 0
        chunks.append(result.samples)
        done += b
    samples = torch.cat(chunks)

    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "samples.pt")) as tmp:
        torch.save(samples.detach().cpu(), tmp)

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
        "time_total_s": timing["total_s"],
        "time_score_s": timing["score_s"],
        "time_sampler_s": timing["sampler_s"],
        "sampler_time_fraction": timing["sampler_s"] / timing["total_s"] if timing["total_s"] > 0 else float("nan"),
    }
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
    if oracle is not None:
        if num_finite >= 2:  # a distance between sample sets needs at least two points
            metrics.update(
                oracle_metrics(finite, oracle, sde, app.num_projections, app.noise_floor_replicates, app.metrics_seed)
            )
        if reference is None:
            ref_gen = torch.Generator(device).manual_seed(app.metrics_seed + 2)
            reference = oracle.sample(min(app.num_samples, 5000), ref_gen, device=device, dtype=torch.float64)
    elif reference is not None and torch.is_tensor(reference) and num_finite >= 2:
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
        if num_finite < app.num_samples:
            title += f" | {app.num_samples - num_finite} of {app.num_samples} non-finite samples not shown"
        if num_finite == 0:
            log.warning("no finite sample to draw; %s not written", os.path.join(out_dir, "samples.png"))
        else:
            ref_img = reference if torch.is_tensor(reference) else None
            save_picture(os.path.join(out_dir, "samples.png"), finite, ref_img, title)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    summary = {k: metrics[k] for k in ("nfe_spent", "time_total_s", "sw2_ratio", "bw_ratio", "mode_weight_error") if k in metrics}
    log.info("metrics: %s", summary)
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-sample`; `argv` (overrides) for in-process use."""
    hydra_app("sample", run, argv)


if __name__ == "__main__":
    main()
