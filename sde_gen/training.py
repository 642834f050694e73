"""Training of time-continuous score networks by denoising score matching (Song et al. 2021, eq. 7).

    theta* = argmin E_t E_{x_0} E_z [ 1/2 lambda(t) || s_theta(a(t) x_0 + s(t) z, t) + z / s(t) ||^2 ]

with Adam (Kingma & Ba 2015), a linear learning-rate warm-up, gradient-norm clipping and an
exponential moving average of the weights (Song & Ermon 2020, "Improved techniques", Sec. 3.5),
kept by PyTorch's own `torch.optim.swa_utils.AveragedModel`. Evaluation samples with the EMA
weights through the configured sampler and compares to fresh data (sliced Wasserstein-2 and
mode-weight error next to their noise floors) and, for oracle data, the score error vs t
(`diagnostics.py`).

Determinism and resume: one dedicated `torch.Generator` draws every training batch, time and noise;
its state, the global RNG state (dropout), the optimiser and the EMA are in every checkpoint, so
N steps + resume N steps gives the same parameters as 2N steps straight (CPU).

The Hydra app `sde-gen-train` (`sde_gen.apps.train`) calls `train(cfg, run_dir)`; outputs
(checkpoints, `metrics.csv`, `loss.csv`, pictures) go to `run_dir`.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConf, instantiate, register_configs, resolve_device, to_plain, validate
from .io import atomic_write_text
from .losses import DenoisingScoreMatching
from .nets import build_score_model
from .plots import plot_loss, plot_samples_vs_data

__all__ = ["learning_rate", "train"]

log = logging.getLogger(__name__)


def learning_rate(tc: TrainConf, step: int) -> float:
    """The learning rate at `step`: linear warm-up, then constant or half-cosine decay to 0."""
    lr = tc.lr * min(1.0, (step + 1) / (tc.warmup + 1))
    if tc.lr_decay == "cosine" and step >= tc.warmup:
        progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr


def _check_top_level(cfg: DictConfig) -> None:
    for key in ("sde", "model", "data", "train", "sampler", "seed", "device"):
        if key not in cfg:
            raise ConfigError(f"{key}: missing from the config")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0; got {cfg.seed!r}")


# ---------------------------------------------------------------- evaluation and pictures
def _noise_floors(data, n: int, tc: TrainConf, seed: int) -> Dict[str, float]:
    """Noise floors of the evaluation metrics for oracle data (mean and std over replicates)."""
    from .metrics import mode_weight_error, noise_floor, sliced_wasserstein

    if data.oracle is None:
        return {}
    g = torch.Generator().manual_seed(seed + 7919)
    draw = lambda m, gen: data.oracle.sample(m, gen, dtype=torch.float64)  # noqa: E731
    sw = noise_floor(draw, n, lambda a, b: sliced_wasserstein(a, b, tc.eval_projections, generator=g),
                     tc.noise_floor_replicates, g)
    mw = noise_floor(draw, n, lambda a, b: mode_weight_error(a, data.oracle), tc.noise_floor_replicates, g)
    return {"sw2_floor_mean": sw["mean"], "sw2_floor_std": sw["std"], "mode_err_floor_mean": mw["mean"], "mode_err_floor_std": mw["std"]}


@torch.no_grad()
def evaluate(model, sde, data, sampler, tc: TrainConf, step: int, seed: int, floors: Dict[str, float],
             run_dir: Optional[str], device) -> Dict[str, Any]:
    """Sample with `model` (the EMA network) and measure the samples (and the score, for oracles)."""
    from .diagnostics import plot_score_error, score_error_vs_t
    from .metrics import mode_weight_error, sliced_wasserstein

    g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)  # independent of the training stream
    n = tc.eval_samples
    res = sampler(sde, model, shape=(n, *data.event_shape), generator=g, device=device, dtype=torch.float32)
    x = res.samples
    out: Dict[str, Any] = {"step": step, "nfe": res.nfe, "finite_fraction": float(torch.isfinite(x.flatten(1)).all(1).double().mean())}
    x = torch.nan_to_num(x, nan=0.0, posinf=1e6, neginf=-1e6)
    g_cpu = torch.Generator().manual_seed(seed + step)
    if data.oracle is not None:
        ref = data.oracle.sample(n, g_cpu, dtype=torch.float64)
    else:
        ref = data.test
    out["sw2"] = float(sliced_wasserstein(x.cpu(), ref, tc.eval_projections, generator=g_cpu))
    if data.oracle is not None:
        out["mode_err"] = float(mode_weight_error(x.cpu(), data.oracle))
        out.update(floors)
        diag = score_error_vs_t(model, sde, data.oracle, n=tc.score_error_samples, generator=g)
        out["score_err_mean"] = float(diag["error"].mean())
        for t, e in zip(diag["t"].tolist(), diag["error"].tolist()):
            out[f"score_err@t={t:.3g}"] = e
        if run_dir is not None and tc.plots:
            plot_score_error(diag, os.path.join(run_dir, "score_error.png"), f"{data.name}, step {step}")
    if run_dir is not None and tc.plots:
        plot_samples_vs_data(x.cpu(), data, os.path.join(run_dir, "samples.png"), step)
    return out


def _write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- the loop
def train(cfg: DictConfig, run_dir: str) -> Dict[str, Any]:
    """Train the model described by `cfg`, writing outputs to `run_dir`.

    Every config value is checked (and every object built) before the first file is written.

    Returns:
        {"step": final step, "final": the last evaluation's metrics, "model": the ScoreModel,
         "ema": the AveragedModel, "wall_s": training wall time}.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    register_configs()
    _check_top_level(cfg)
    tc: TrainConf = validate(cfg.train, TrainConf, "train")
    device = resolve_device(cfg.device)
    seed = int(cfg.seed)
    sde = instantiate(cfg.sde, "sde").to(device)
    data = instantiate(cfg.data, "data")
    sampler = instantiate(cfg.sampler, "sampler", check_finite=True)
    loss_fn = DenoisingScoreMatching(tc.weighting, tc.importance_sampling)
    data_std = data.data_std()
    torch.manual_seed(seed)  # network initialisation
    model = build_score_model(cfg.model, sde, data.event_shape, data_std).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    gen = torch.Generator(device).manual_seed(seed)
    step, loss_rows, eval_rows = 0, [], []

    ckpt_dir = os.path.join(run_dir, "checkpoints")
    resume_from = None
    if tc.resume == "auto":
        resume_from = latest_checkpoint(ckpt_dir)
    elif tc.resume is not None:
        resume_from = latest_checkpoint(tc.resume)
        if resume_from is None:
            raise ConfigError(f"train.resume: no checkpoint found at {tc.resume!r}")
    if resume_from is not None:
        # the stored config is checked against the registries and the user's own trust, never its own
        state = load_checkpoint(resume_from, map_location="cpu", trusted_targets=cfg.get("trusted_targets") or ())
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        step = int(state["step"])
        loss_rows = [list(r) for r in state["metrics"]["loss"]]
        eval_rows = list(state["metrics"]["eval"])
        log.info("resumed from %s at step %d", resume_from, step)

    os.makedirs(run_dir, exist_ok=True)
    config_plain = to_plain(cfg)
    atomic_write_text(os.path.join(run_dir, "config_resolved.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
    writer = None
    if tc.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(run_dir, "tb"))
        except Exception:  # TensorBoard is optional
            writer = None
    floors = _noise_floors(data, tc.eval_samples, tc, seed)

    def save():
        state = {
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": {"train": gen.get_state(), "torch": torch.get_rng_state()}, "config": config_plain,
            "metrics": {"loss": loss_rows, "eval": eval_rows}, "event_shape": list(data.event_shape), "data_std": data_std,
        }
        save_checkpoint(checkpoint_path(ckpt_dir, step), state, keep=tc.keep_checkpoints)

    def run_eval():
        ema.eval()
        row = evaluate(ema.module, sde, data, sampler, tc, step, seed, floors, run_dir, device)
        eval_rows.append(row)
        _write_csv(os.path.join(run_dir, "metrics.csv"), eval_rows)
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(f"eval/{k}", v, step)
        log.info("step %d: %s", step, {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items() if "@" not in k})

    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=step, disable=not tc.progress, dynamic_ncols=True, desc="train")
    params = [p for p in model.parameters()]
    loss_sum = torch.zeros((), device=device)
    count, t_log, t0 = 0, time.perf_counter(), time.perf_counter()
    model.train()
    try:
        while step < tc.steps:
            lr = learning_rate(tc, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0 = data.sample_batch(tc.batch_size, gen).to(device)
            loss = loss_fn(model, sde, x0, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            ema.update_parameters(model)
            step += 1
            loss_sum += loss.detach()
            count += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                mean_loss = float(loss_sum) / count  # one host sync per log interval
                rate = count / max(now - t_log, 1e-9)
                loss_rows.append([step, mean_loss, lr, rate])
                bar.set_postfix(loss=f"{mean_loss:.4f}", steps_s=f"{rate:.0f}")
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, step)
                loss_sum.zero_()
                count, t_log = 0, now
            if step % tc.eval_every == 0 or step == tc.steps:
                model.eval()
                run_eval()
                model.train()
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save()
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: saving a checkpoint to resume from (train.resume=auto)", step)
        save()
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t0
    if tc.plots:
        plot_loss(loss_rows, os.path.join(run_dir, "loss.png"))
    _write_csv(os.path.join(run_dir, "loss.csv"), [dict(zip(("step", "loss", "lr", "steps_per_s"), r)) for r in loss_rows])
    final = eval_rows[-1] if eval_rows else {}
    return {"step": step, "final": final, "model": model, "ema": ema, "wall_s": wall, "run_dir": run_dir}
