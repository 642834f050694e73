"""Training of time-continuous score networks by denoising score matching (Song et al. 2021, eq. 7).

    theta* = argmin E_t E_{x_0} E_z [ 1/2 lambda(t) || s_theta(a(t) x_0 + s(t) z, t) + z / s(t) ||^2 ]

Four kinds of run share the loop, told apart by the config:

* unconditional (`model.num_classes: null`, the default): the equation above;
* class-conditional (`model.num_classes` an integer or `auto`, the data's class count): s_theta(x_t, t, y)
  on labelled data, each label replaced by the "no label" token with probability
  `train.label_dropout` (classifier-free guidance, Ho & Salimans 2021), so the one network also
  learns the unconditional score; the evaluation adds class-conditional numbers;
* a noise-conditional classifier p_phi(y | x_t, t) (`model=classifier_mlp|classifier_unet` with
  `loss=classifier`): cross-entropy on perturbed data (`sde_gen.losses.NoiseConditionalCrossEntropy`);
  the evaluation measures its accuracy on x_t at a few t on held-out data;
* discrete diffusion (Austin et al. 2021; `sde=d3pm_*`, `model=token_transformer`, `loss=d3pm_hybrid`,
  `sampler=d3pm_ancestral|maskgit`, token data, e.g. `experiment=d3pm_digits_absorbing`): the `sde:` node is
  the discrete forward process, the network predicts x_0 logits and the loss is D3PM's hybrid
  L_vb + lambda CE (eq. 6); the evaluation reports the samples' NFE and marginal TV and the test -ELBO in
  bits/dim (`evaluate_discrete`); K must fit the data, checked at start-up.

with the configured `loss:` (DSM), `optimizer:` (Adam, Kingma & Ba 2015, or AdamW) and
`lr_scheduler:` (linear warm-up, then cosine or constant; `sde_gen.optim`) nodes, gradient-norm
clipping and an exponential moving average of the weights (Song & Ermon 2020, "Improved techniques", Sec. 3.5),
kept by PyTorch's own `torch.optim.swa_utils.AveragedModel`. Evaluation samples with the EMA
weights through the configured sampler and compares to fresh data (sliced Wasserstein-2 and
mode-weight error next to their noise floors) and, for oracle data, the score error vs t
(`diagnostics.py`).

Determinism and resume: one dedicated `torch.Generator` draws every training batch, time and noise;
a checkpoint is the `TrainState` (`sde_gen.train_state`: weights, EMA, optimiser, scheduler, RNG
states, step, loss accumulators of the current log interval, logged tables) plus the run's config,
so N steps + resume gives the same parameters and the same `loss.csv` as a straight run (CPU).

Faults lose nothing:

* a step whose loss or gradient is not finite is skipped (no optimiser or EMA update) and counted
  (`skipped` in `loss.csv`); `train.max_bad_steps` consecutive ones stop the run with
  `TrainingDiverged`; no checkpoint is written while the latest step was skipped, and weights that
  are not finite are never written;
* SIGINT / SIGTERM finish the current step, save a checkpoint at that step boundary and raise
  `TrainingInterrupted` (the app exits with 130 / 143); `train.resume=auto` continues bit for bit;
* before the first step the checkpoint folder is created and checked writable, and the temporary
  files of a killed save are removed; a resume whose `sde`, `data`, `model` or `seed` differ from
  the checkpoint's is refused naming the keys.

Scale (docs/gpu.md): `train.precision=bf16|fp16` runs the forward pass and the loss under
`torch.autocast` (weights, EMA and optimiser state float32; a GradScaler for fp16, CUDA only);
`train.compile=true` trains through `torch.compile` (eager fallback, reported once); under
`torchrun --nproc_per_node=N` each process computes its 1/N slice of the global batch, whose draws
every process makes from the shared generator (with `train.loader=dataloader` each process reads
only its slice of the global batch through a `DataLoader`, `sde_gen.data.loader`), and
DistributedDataParallel averages the gradients (`sde_gen.distributed`): the weights equal one
process's on the same global batch up to rounding. Checkpoints also store the data statistics
(`sde_gen.data.DataStats`), so sampling needs no data files.

The Hydra app `sde-gen-train` (`sde_gen.apps.train`) calls `train(cfg, run_dir)`; outputs
(checkpoints, pictures, and through the `logger:` node `metrics.csv`, `loss.csv`, `timing.csv`
(steps/s, wall-clock dependent)) go to `run_dir`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import threading
import time
import warnings
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import (CheckpointError, check_checkpoint_dir, checkpoint_path, latest_checkpoint, load_checkpoint,
                         nonfinite_weights, prepare_checkpoint_dir, save_checkpoint)
from .config import (PRECISIONS, ConfigError, OptimizerConf, TrainConf, instantiate, register_configs, resolve_device,
                     to_plain, validate)
from .data.stats import DataStats
from .distributed import finish_distributed, init_distributed, launched_world_size, process_device, shard_batch_size
from .io import atomic_write_text
from .losses import drop_labels
from .nets import build_classifier, build_score_model, model_kind
from .plots import plot_loss, plot_samples_vs_data
from .progress import StepProgress, progress_enabled
from .train_state import TrainState

__all__ = ["train", "TrainingDiverged", "TrainingInterrupted", "RESUME_MUST_MATCH", "evaluate_classifier", "evaluate_discrete"]

log = logging.getLogger(__name__)

#: config keys a resumed run must share with its checkpoint; everything else (train.*, sampler.*,
#: device) may change, e.g. a larger train.steps to extend a run
RESUME_MUST_MATCH = ("sde", "data", "model", "seed")


class _NullLogger:
    """The logger of the processes other than rank 0 (which alone writes)."""

    def log_train(self, *args) -> None:
        pass

    def log_eval(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingDiverged(RuntimeError):
    """`train.max_bad_steps` consecutive steps had a non-finite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved at a step boundary.

    Attributes:
        signum: the signal number.
        step: the step of the checkpoint.
        checkpoint: its path.
        exit_code: 128 + signum, the shell convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} "
                         "saved; continue with train.resume=auto in the same run directory")


def _check_top_level(cfg: DictConfig) -> None:
    for key in ("sde", "model", "data", "train", "loss", "optimizer", "lr_scheduler", "logger", "sampler", "seed", "device"):
        if key not in cfg:
            raise ConfigError(f"{key}: missing from the config")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0; got {cfg.seed!r}")


def _resolve_num_classes(cfg: DictConfig, data, kind: str) -> DictConfig:
    """Check `model.num_classes` against the data; `auto` becomes the data's class count.

    Returns the config to train with: `cfg` itself, or a copy with the count filled in (so the
    stored config, the resume comparison and the checkpoint loaders see an integer).

    Raises:
        ConfigError naming both the model's and the data's side: a conditional model (or a
        classifier) on unlabelled data, or class counts that differ.
    """
    value = cfg.model.get("num_classes", None)
    if value is None:
        if kind == "classifier":
            raise ConfigError("model.num_classes: a classifier needs the number of classes (an integer, or auto for the data's)")
        return cfg  # unconditional: labels, if the data have them, are not used
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"model.num_classes must be null (unconditional), auto (the data's class count) or an integer >= 1; "
                          f"got {value!r}")
    what = "a noise-conditional classifier" if kind == "classifier" else "a class-conditional model"
    try:
        count = data.check_labelled(f"model.num_classes={value} makes {what}, which needs labelled data")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if value == "auto":
        cfg = copy.deepcopy(cfg)
        cfg.model.num_classes = count
    elif value != count:
        raise ConfigError(f"model.num_classes={value} does not match data {data.name!r}, which has {count} classes; "
                          f"set model.num_classes={count} or auto")
    return cfg


_KIND_WORDS = {"classifier": "noise-conditional classifier", "score": "score backbone",
               "discrete": "discrete-diffusion (x_0-logit) network"}
_KIND_FIX = {"classifier": "loss=classifier", "score": "loss=dsm", "discrete": "loss=d3pm_hybrid"}


def _check_loss_for(loss_fn, kind: str, cfg: DictConfig) -> None:
    """The loss must train what the model section builds (a score model, a classifier or a discrete model)."""
    trains = getattr(loss_fn, "trains", "score")
    if trains != kind:
        raise ConfigError(f"loss: {type(loss_fn).__name__} trains a {trains} model but model._target_ "
                          f"{cfg.model.get('_target_')!r} is a {_KIND_WORDS[kind]}; "
                          f"use {_KIND_FIX[kind]} (experiment=classifier_ring2d, classifier_digits, d3pm_digits_uniform, "
                          "d3pm_digits_absorbing and maskgit_digits set both)")


#: the experiments that train discrete diffusion (issue 16)
DISCRETE_EXPERIMENTS = "experiment=d3pm_digits_uniform, d3pm_digits_absorbing, maskgit_digits or d3pm_markov"


def _check_discrete_pairing(cfg: DictConfig, sde, kind: str) -> None:
    """A discrete forward process goes with a discrete network and a discrete sampler, and a continuous
    SDE with neither: one ConfigError naming the sections that disagree."""
    from .discrete.processes import DiscreteProcess
    from .discrete.samplers import DISCRETE_SAMPLERS
    from .config import target_names

    discrete_sde = isinstance(sde, DiscreteProcess)
    sampler_targets = {n for cls in DISCRETE_SAMPLERS.values() for n in target_names(cls)}
    discrete_sampler = cfg.sampler.get("_target_") in sampler_targets
    if discrete_sde == (kind == "discrete") == discrete_sampler:
        return
    got = (f"sde._target_={cfg.sde.get('_target_')!r} ({'discrete' if discrete_sde else 'continuous'}), "
           f"model._target_={cfg.model.get('_target_')!r} ({'discrete' if kind == 'discrete' else 'continuous'}), "
           f"sampler._target_={cfg.sampler.get('_target_')!r} ({'discrete' if discrete_sampler else 'continuous'})")
    raise ConfigError(f"sde, model, sampler: discrete diffusion needs all three discrete (sde=d3pm_uniform|d3pm_absorbing|"
                      f"d3pm_gaussian, model=token_transformer, sampler=d3pm_ancestral|maskgit, as {DISCRETE_EXPERIMENTS} "
                      f"set them) and continuous training none; got {got}")


def _check_token_data(cfg: DictConfig, process, data) -> None:
    """Token data whose ids fit the process: no id outside [0, K), no mask token, and K equal to the data's."""
    from .discrete.data import TokenDataset

    K = process.num_classes
    if not isinstance(data, TokenDataset):
        raise ConfigError(f"data: {data.name!r} is not token data; a discrete process needs data=digits_tokens, "
                          f"mnist_tokens or markov_tokens ({DISCRETE_EXPERIMENTS})")
    top = max(int(data.train.max()), int(data.test.max()))
    if process.mask_index is not None and top >= process.mask_index:
        raise ConfigError(f"sde.num_classes={K}: data {data.name!r} holds id {K}, the mask token of sde=d3pm_absorbing "
                          f"(data ids must lie in [0, {K})); set sde.num_classes={data.num_levels}, the data's number of levels")
    if top >= K:
        raise ConfigError(f"sde.num_classes={K}: data {data.name!r} holds token ids up to {top}, outside [0, {K}); "
                          f"set sde.num_classes={data.num_levels}, the data's number of levels")
    if K != data.num_levels:
        raise ConfigError(f"sde.num_classes={K} does not match data {data.name!r}, which has K = {data.num_levels} levels; "
                          f"set sde.num_classes={data.num_levels}")


# ---------------------------------------------------------------- evaluation and pictures
#: the fewest samples per evaluation that `eval_budget` leaves (a sliced W2 still well above its floor's spread)
MIN_EVAL_SAMPLES = 1000


def eval_sample_count(tc: TrainConf, nfe: int) -> int:
    """Samples per evaluation: `train.eval_samples`, cut so that the run's evaluations cost about
    `train.eval_budget` of its training work (see `TrainConf.eval_budget`).

    Training costs ~3 forwards per example (forward + backward), steps x batch_size examples; the
    evaluations (every eval_every steps and at the end) cost n x nfe forwards each.
    """
    if tc.eval_budget is None:
        return tc.eval_samples
    evaluations = tc.steps // tc.eval_every + (1 if tc.steps % tc.eval_every else 0)
    affordable = int(tc.eval_budget * 3 * tc.steps * tc.batch_size / (evaluations * max(int(nfe), 1)))
    return min(tc.eval_samples, max(MIN_EVAL_SAMPLES, affordable))


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
    steps = getattr(sampler, "num_steps", None)
    with StepProgress(progress_enabled(tc.progress), steps if isinstance(steps, int) else None,
                      f"evaluate step {step}") as bar:
        res = sampler(sde, model, shape=(n, *data.event_shape), generator=g, device=device, dtype=torch.float32,
                      callback=bar.callback)
    x = res.samples
    out: Dict[str, Any] = {"step": step, "nfe": res.nfe, "eval_samples": n, "finite_fraction": float(torch.isfinite(x.flatten(1)).all(1).double().mean())}
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
    if getattr(model, "num_classes", None) is not None:
        out.update(_evaluate_conditional(model, sde, data, sampler, tc, ref, g, g_cpu, device))
    return out


def _evaluate_conditional(model, sde, data, sampler, tc: TrainConf, ref, g, g_cpu, device) -> Dict[str, float]:
    """Class-conditional numbers of a conditional model (the keys above are those of its
    unconditional, no-label output): samples with the held-out labels, so that their classes
    follow the data's proportions, scored as a whole against the data (`cond_sw2`) and, for oracle
    data, by purity, the fraction whose most probable class under the exact posterior p_0(c | x)
    is the requested one, next to the same fraction for exact samples (`purity_exact`, the ceiling:
    classes overlap). Per-class distances are the evaluation app's (`sde_gen.evaluation`)."""
    from .guidance import classifier_free
    from .metrics import sliced_wasserstein

    n = tc.eval_samples
    idx = torch.arange(n) % data.test_labels.shape[0]
    y = data.test_labels[idx].to(device)
    res = sampler(sde, classifier_free(model, y, 1.0), shape=(n, *data.event_shape), generator=g, device=device,
                  dtype=torch.float32)
    x = torch.nan_to_num(res.samples, nan=0.0, posinf=1e6, neginf=-1e6).cpu()
    out = {"cond_sw2": float(sliced_wasserstein(x, ref, tc.eval_projections, generator=g_cpu))}
    if data.oracle is not None:
        oracle, y = data.oracle, y.cpu()
        out["purity"] = float((oracle.class_log_posterior(x.double()).argmax(1) == y).double().mean())
        exact, labels = data.test, data.test_labels
        out["purity_exact"] = float((oracle.class_log_posterior(exact.double()).argmax(1) == labels).double().mean())
    return out


#: where the classifier's accuracy is measured: fractions of [eps, T] ("small t" is 0.05)
CLASSIFIER_EVAL_FRACTIONS = (0.0, 0.05, 0.5, 1.0)


@torch.no_grad()
def evaluate_classifier(model, sde, data, tc: TrainConf, step: int, seed: int, device) -> Dict[str, Any]:
    """Accuracy of a noise-conditional classifier on x_t = a(t) x_0 + s(t) z of the held-out data.

    The same x_0 (the first `train.eval_samples` held-out points) and the same z at every
    evaluation (a generator seeded by `seed` only), so the rows differ by the weights alone. For
    oracle data `bayes_acc@t` is the accuracy of the exact posterior p_t(c | x_t) on the same x_t,
    the best any classifier can do.

    Returns:
        {"step", "acc@t=<t>" and (oracles) "bayes_acc@t=<t>" per time, "acc_small_t" (the
        accuracy at t = eps + 0.05 (T - eps)), "ce_small_t" (its mean cross-entropy)}.
    """
    n = min(tc.eval_samples, data.test.shape[0])
    x0, y = data.test[:n].to(device), data.test_labels[:n].to(device)
    g = torch.Generator(device).manual_seed(seed * 1_000_003 + 104_729)
    out: Dict[str, Any] = {"step": step}
    for frac in CLASSIFIER_EVAL_FRACTIONS:
        t = torch.full((n,), sde.eps + frac * (sde.T - sde.eps), device=device, dtype=torch.float32)
        x_t = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype))
        logits = model(x_t, t)
        acc = float((logits.argmax(1) == y).double().mean())
        out[f"acc@t={float(t[0]):.3g}"] = acc
        if frac == 0.05:
            out["acc_small_t"] = acc
            out["ce_small_t"] = float(torch.nn.functional.cross_entropy(logits.double(), y))
        if data.oracle is not None:
            post = data.oracle.class_log_posterior(x_t.double(), t.double(), sde)
            out[f"bayes_acc@t={float(t[0]):.3g}"] = float((post.argmax(1) == y).double().mean())
    return out


@torch.no_grad()
def evaluate_discrete(model, process, data, sampler, tc: TrainConf, step: int, seed: int, run_dir: Optional[str],
                      device) -> Dict[str, Any]:
    """A discrete model's evaluation row: `train.eval_samples` samples (NFE, marginal TV to the test set
    next to the training set's) and the negative ELBO in bits/dim of as many held-out points
    (`sde_gen.discrete.evaluation`); the sample grid goes to samples.png."""
    from .discrete.evaluation import elbo_report, plot_token_grid, sample_report

    g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)  # independent of the training stream
    n = tc.eval_samples
    res = sampler(process, model, shape=(n, *data.event_shape), generator=g, device=device)
    out: Dict[str, Any] = {"step": step, "nfe": res.nfe}
    out.update(sample_report(res.samples, data))
    out.update(elbo_report(process, model, data.test[:n].to(device), g, batch_size=n, data=data))
    if run_dir is not None and tc.plots:
        plot_token_grid(res.samples, data.num_levels, os.path.join(run_dir, "samples.png"),
                        f"{data.name}, step {step}, {getattr(sampler, 'name', '')} NFE {res.nfe}")
    return out


# ---------------------------------------------------------------- faults
class _StopRequest:
    """SIGINT / SIGTERM handlers for the duration of training (the previous ones come back on exit).

    The first signal only records itself, so the loop ends the current step, saves and stops at
    the step boundary (a KeyboardInterrupt raised mid-step would leave the generator ahead of the
    weights); a second signal interrupts at once (the last checkpoint stays the resume point).
    Outside the main thread Python cannot install handlers, and nothing changes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum  # no logging here: a handler may run inside a logging call

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            # None: the old handler was not installed from Python; the default is the safe choice
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()


_ABSENT = object()


def _flatten(node: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def _resume_mismatches(stored: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """`key: value (checkpoint) != value (now)` for every leaf of RESUME_MUST_MATCH that differs."""
    show = lambda v: "(absent)" if v is _ABSENT else str(v)  # noqa: E731
    diffs = []
    for section in RESUME_MUST_MATCH:
        a = _flatten(stored.get(section, _ABSENT), section)
        b = _flatten(now.get(section, _ABSENT), section)
        for key in list(a) + [k for k in b if k not in a]:
            va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
            if va is _ABSENT and vb is _ABSENT:
                continue
            # True == 1 in Python, but a flag is not a count
            if va is _ABSENT or vb is _ABSENT or va != vb or (type(va) is bool) != (type(vb) is bool):
                diffs.append(f"{key}: {show(va)} (checkpoint) != {show(vb)} (now)")
    return diffs


# ---------------------------------------------------------------- the loop
def train(cfg: DictConfig, run_dir: str) -> Dict[str, Any]:
    """Train the model described by `cfg`, writing outputs to `run_dir`.

    Every config value is checked (and every object built), a resume checkpoint is loaded and
    compared with the config, and the checkpoint folder is checked writable before the first step.

    Returns:
        {"step": final step, "final": the last evaluation's metrics, "model": the ScoreModel (or
         NoiseConditionalClassifier),
         "ema": the AveragedModel, "wall_s": training wall time, "skipped_steps": steps skipped
         for a non-finite loss or gradient (over the whole run, resumes included), "run_dir"}.

    Raises:
        ConfigError: a bad config value, or a resume checkpoint trained with another sde / data /
            model / seed (the message lists the differing keys); a conditional model or a
            classifier on unlabelled data, a class count that differs from the data's, a loss
            that does not train what the model section builds.
        CheckpointError: the checkpoint folder is a file or not writable; the resume checkpoint is
            unreadable or holds non-finite weights.
        TrainingDiverged: `train.max_bad_steps` consecutive non-finite steps.
        TrainingInterrupted: SIGINT or SIGTERM; a checkpoint was saved at the step boundary.
        OSError: ENOSPC when a checkpoint does not fit on the disk (the previous one is intact).
    """
    register_configs()
    _check_top_level(cfg)
    tc: TrainConf = validate(cfg.train, TrainConf, "train")
    validate(cfg.optimizer, OptimizerConf, "optimizer")
    device = resolve_device(cfg.device)
    if tc.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision=fp16 needs a CUDA device (its GradScaler is CUDA-only); device is {device.type!r}; "
                          "on the CPU use train.precision=bf16 or fp32")
    if tc.compile:
        from torch._dynamo import list_backends

        backends = list_backends(exclude_tags=())
        if tc.compile_backend not in backends:
            raise ConfigError(f"train.compile_backend={tc.compile_backend!r} is not a torch.compile backend; allowed: {backends}")
    world = launched_world_size()
    try:
        local_batch = shard_batch_size(tc.batch_size, world)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    seed = int(cfg.seed)
    sde = instantiate(cfg.sde, "sde")
    kind = model_kind(cfg.model)
    _check_discrete_pairing(cfg, sde, kind)
    data = instantiate(cfg.data, "data")
    if kind == "discrete":
        _check_token_data(cfg, sde, data)
        sampler = instantiate(cfg.sampler, "sampler")
        try:
            sampler.check_process(sde)
        except ValueError as err:
            raise ConfigError(f"sampler: {err}") from None
    else:
        sampler = instantiate(cfg.sampler, "sampler", check_finite=True)
    loss_fn = instantiate(cfg.loss, "loss")
    if tc.loader == "dataloader" and getattr(data, "train_pixels", None) is None:
        raise ConfigError(f"train.loader=dataloader reads finite image data sets (digits, mnist, cifar10, image_folder); "
                          f"data {getattr(data, 'name', '')!r} draws its batches itself: use train.loader=device")
    # a classifier's evaluation draws no samples (a few forwards of held-out points): no budget needed
    n_eval = eval_sample_count(tc, getattr(sampler, "nfe", 1)) if kind == "score" else tc.eval_samples
    if n_eval != tc.eval_samples:
        log.info("evaluations draw %d samples (train.eval_samples=%d cut by train.eval_budget=%g for a %d-step run)",
                 n_eval, tc.eval_samples, tc.eval_budget, tc.steps)
        tc = dataclasses.replace(tc, eval_samples=n_eval)
    _check_loss_for(loss_fn, kind, cfg)
    cfg = _resolve_num_classes(cfg, data, kind)
    if world > 1 and not hasattr(loss_fn, "draw"):
        raise ConfigError(f"loss: {type(loss_fn).__name__} has no draw(sde, x0, generator) method, which training on "
                          f"{world} processes needs to share the global batch's random draws")
    dist_info = init_distributed(device)
    try:
        return _train(cfg, run_dir, tc, process_device(device, dist_info), dist_info, local_batch, seed, sde, data, sampler,
                      loss_fn, kind)
    finally:
        finish_distributed(dist_info)


def _train(cfg: DictConfig, run_dir: str, tc: TrainConf, device: torch.device, dist_info, local_batch: int, seed: int,
           sde, data, sampler, loss_fn, kind: str) -> Dict[str, Any]:
    """`train` after the start-up checks, on this process's device (a rank of a torchrun run or the only process)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    sde = sde.to(device)
    main = dist_info.is_main
    num_classes = cfg.model.get("num_classes", None)  # None: unconditional score model
    data_std = data.data_std()
    data_stats = DataStats.from_dataset(data, data_std).as_dict()  # so that sampling needs no data files
    torch.manual_seed(seed)  # network initialisation
    trusted = cfg.get("trusted_targets") or ()
    if kind == "classifier":
        model = build_classifier(cfg.model, sde, data.event_shape, data_std).to(device)
    elif kind == "discrete":
        from .discrete.nets import build_discrete_model

        model = build_discrete_model(cfg.model, sde, data.event_shape).to(device)
    else:
        model = build_score_model(cfg.model, sde, data.event_shape, data_std, trusted_targets=trusted).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    optimizer = _build(cfg.optimizer, "optimizer", model.parameters())
    lr_scheduler = _build(cfg.lr_scheduler, "lr_scheduler", optimizer)
    autocast_dtype = PRECISIONS[tc.precision]
    scaler = torch.amp.GradScaler("cuda") if tc.precision == "fp16" else None
    ts = TrainState(model, ema, optimizer, lr_scheduler, torch.Generator(device).manual_seed(seed), scaler=scaler)
    # only rank 0 writes; the loggers write nothing before the first record
    logger = instantiate(cfg.logger, "logger", run_dir=run_dir) if main else _NullLogger()
    train_model = model
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    eager_model = train_model
    compile_pending = tc.compile
    if tc.compile:
        try:
            train_model = torch.compile(train_model, backend=tc.compile_backend)
        except Exception as err:  # noqa: BLE001 - an unsupported platform: run eager, say so once
            log.warning("train.compile: torch.compile is not available here (%s: %s); training runs eager",
                        type(err).__name__, err)
            compile_pending = False
    config_plain = to_plain(cfg)

    ckpt_dir = os.path.join(run_dir, "checkpoints")
    resume_from = None
    if tc.resume not in (None, "auto"):
        resume_from = latest_checkpoint(tc.resume)
        if resume_from is None:
            raise ConfigError(f"train.resume: no checkpoint found at {tc.resume!r}")
    check_checkpoint_dir(ckpt_dir)  # before "auto" looks inside: a file named `checkpoints` is no run
    if tc.resume == "auto":
        resume_from = latest_checkpoint(ckpt_dir)
    if resume_from is not None:
        # the stored config is checked against the registries and the user's own trust, never its own
        state = load_checkpoint(resume_from, map_location="cpu", trusted_targets=trusted)
        diffs = _resume_mismatches(state["config"], config_plain)
        if diffs:
            raise ConfigError(f"train.resume: checkpoint {resume_from} was trained with another config: " + "; ".join(diffs)
                              + " (only train.*, loss, optimizer, lr_scheduler, logger, sampler.* and device may differ on resume; "
                              + f"{', '.join(RESUME_MUST_MATCH)} may not)")
        bad = nonfinite_weights(state)
        if bad:
            raise CheckpointError(f"checkpoint {resume_from!r} holds non-finite weights ({', '.join(bad[:3])}); "
                                  "resume from an earlier checkpoint with train.resume=<file>")
        ts.load_state_dict(state)
        del state  # a CPU copy of every tensor: not kept for the whole run
        log.info("resumed from %s at step %d", resume_from, ts.step)

    if main:
        for stale in prepare_checkpoint_dir(ckpt_dir):
            log.warning("removed %s, left by a checkpoint save that did not finish", stale)
        atomic_write_text(os.path.join(run_dir, "config_resolved.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
    floors = _noise_floors(data, tc.eval_samples, tc, seed) if kind == "score" and main else {}
    saved: Dict[str, Any] = {"step": None, "path": resume_from}

    def save():
        nonlocal save_due
        if not main:
            saved.update(step=ts.step)
            save_due = False
            return
        state = dict(ts.state_dict(), config=config_plain, event_shape=list(data.event_shape), data_std=data_std,
                     data_stats=data_stats)
        bad = nonfinite_weights(state)
        if bad:
            raise TrainingDiverged(f"non-finite weights at step {ts.step} ({', '.join(bad[:3])}); not saved; the last good "
                                   f"checkpoint is {saved['path']}")
        path = checkpoint_path(ckpt_dir, ts.step)
        save_checkpoint(path, state, keep=tc.keep_checkpoints)
        saved.update(step=ts.step, path=path)
        save_due = False

    def write_logs():
        if not main:
            return
        logger.log_train(ts.loss_rows, ts.timing_rows)
        if tc.plots:
            plot_loss([[r["step"], r["loss"]] for r in ts.loss_rows], os.path.join(run_dir, "loss.png"))

    def run_eval():
        if not main:
            return
        ema.eval()
        if kind == "classifier":
            row = evaluate_classifier(ema.module, sde, data, tc, ts.step, seed, device)
        elif kind == "discrete":
            row = evaluate_discrete(ema.module, sde, data, sampler, tc, ts.step, seed, run_dir, device)
        else:
            row = evaluate(ema.module, sde, data, sampler, tc, ts.step, seed, floors, run_dir, device)
        ts.eval_rows.append(row)
        logger.log_eval(ts.eval_rows)
        log.info("step %d: %s", ts.step, {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items() if "@" not in k})

    def log_row(lr: float, now: float):
        nonlocal t_log, steps_in_rate
        mean_loss = float(ts.loss_sum) / ts.good if ts.good else math.nan  # one host sync per log interval
        ts.loss_rows.append({"step": ts.step, "loss": mean_loss, "lr": lr, "skipped": ts.skipped})
        rate = steps_in_rate / max(now - t_log, 1e-9)
        ts.timing_rows.append({"step": ts.step, "steps_per_s": rate})
        bar.set_postfix(loss=f"{mean_loss:.4f}", steps_s=f"{rate:.0f}")
        if ts.skipped:
            log.warning("steps %d-%d: %d of them skipped (non-finite loss or gradient)", ts.step - ts.good - ts.skipped + 1,
                        ts.step, ts.skipped)
        logger.log_train(ts.loss_rows, ts.timing_rows)
        ts.loss_sum.zero_()
        ts.good, ts.skipped, t_log, steps_in_rate = 0, 0, now, 0

    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=ts.step, disable=not (progress_enabled(tc.progress) and main), dynamic_ncols=True,
               desc="train")
    params = [p for p in model.parameters()]
    rank_slice = slice(dist_info.rank * local_batch, (dist_info.rank + 1) * local_batch)

    loader = None
    if tc.loader == "dataloader":  # built after a resume: its sampler starts at the checkpoint's step
        from .data.loader import image_loader

        try:
            loader = iter(image_loader(data, tc.batch_size, seed, dist_info.rank, dist_info.world_size, ts.step,
                                       labels=num_classes is not None, num_workers=tc.num_workers,
                                       pin_memory=tc.pin_memory and device.type == "cuda",
                                       persistent_workers=tc.persistent_workers))
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def next_batch():
        """This process's (x0, y) of the step from the DataLoader (None for the on-device sampler)."""
        if loader is None:
            return None
        item = next(loader)
        x0, y = (item, None) if num_classes is None else item
        return x0.to(device, non_blocking=True), (None if y is None else y.to(device, non_blocking=True))

    def forward_backward(net, batch=None) -> torch.Tensor:
        """Draw the step's global batch (or take this process's share from the DataLoader), compute
        this process's loss (under autocast) and its gradient."""
        draws = {}
        if batch is not None:  # the loader gave this process's rows; the generator draws for the global batch
            x0, y = batch
            if dist_info.active:
                # the draws of the global batch (they depend on its shape only), then this process's slice
                shape = (tc.batch_size, *x0.shape[1:])
                if y is not None and kind == "score":
                    keep = drop_labels(torch.zeros(tc.batch_size, dtype=torch.long, device=device), tc.label_dropout,
                                       num_classes, ts.generator)[rank_slice]
                    y = torch.where(keep == num_classes, keep, y)
                draws = {k: v[rank_slice] for k, v in loss_fn.draw(sde, x0.new_empty(shape), ts.generator).items()}
            elif y is not None and kind == "score":
                y = drop_labels(y, tc.label_dropout, num_classes, ts.generator)
        elif num_classes is None:  # unconditional: the stream of draws is that of every earlier version
            x0, y = data.sample_batch(tc.batch_size, ts.generator).to(device), None
        else:  # the same x0 as above, then (score models) the dropout mask, then t and z
            x0, y = data.sample_batch(tc.batch_size, ts.generator, return_labels=True)
            x0, y = x0.to(device), y.to(device)
            if kind == "score":
                y = drop_labels(y, tc.label_dropout, num_classes, ts.generator)
        if batch is None and dist_info.active:  # the global batch's draws, then this process's slice
            draws = {k: v[rank_slice] for k, v in loss_fn.draw(sde, x0, ts.generator).items()}
            x0, y = x0[rank_slice], (None if y is None else y[rank_slice])
        kwargs = dict(draws) if y is None else dict(draws, y=y)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn(net, sde, x0, ts.generator, **kwargs)
        loss = loss.float()  # reduced in float32 whatever the autocast dtype
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss
    t_log = t0 = time.perf_counter()
    steps_in_rate, save_due = 0, False
    model.train()
    try:
        with _StopRequest() as stop:
            while ts.step < tc.steps:
                lr = optimizer.param_groups[0]["lr"]  # set by the scheduler for this step
                batch = next_batch()
                if compile_pending:  # a failed compilation retries the step eager with the same draws
                    rng_before = (ts.generator.get_state(), torch.get_rng_state())
                    try:
                        loss = forward_backward(train_model, batch)
                    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
                        log.warning("train.compile: torch.compile (backend %r) failed on the first step (%s: %s); "
                                    "training continues eager", tc.compile_backend, type(err).__name__,
                                    str(err).splitlines()[0][:200] if str(err) else "")
                        train_model = eager_model
                        ts.generator.set_state(rng_before[0])
                        torch.set_rng_state(rng_before[1])
                        loss = forward_backward(train_model, batch)
                    compile_pending = False
                else:
                    loss = forward_backward(train_model, batch)
                if dist_info.active:  # the global mean loss and any process's stop request, in one all-reduce
                    import torch.distributed as dist

                    shared = torch.stack([loss.detach().float(),
                                          torch.tensor(float(stop.signum is not None), device=loss.device)])
                    dist.all_reduce(shared)
                    loss = shared[0] / dist_info.world_size
                    if bool(shared[1] > 0) and stop.signum is None:
                        stop.signum = signal.SIGTERM
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip and check the true gradients
                if tc.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)  # the norm before clipping
                else:
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                # The skip must be decided before the optimiser step: one host sync of one bool per
                # step, as torch.amp.GradScaler makes for its own skipped steps (free on the CPU).
                finite_loss = bool(torch.isfinite(loss.detach()))
                if finite_loss and bool(torch.isfinite(grad_norm)):
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    ema.update_parameters(model)
                    ts.loss_sum += loss.detach().float()
                    ts.good, ts.bad_streak = ts.good + 1, 0
                elif finite_loss and scaler is not None:
                    # fp16 overflow of the scaled gradients: the scaler skips the step and lowers
                    # its scale (its own, expected skips; not counted as divergence)
                    scaler.step(optimizer)
                    scaler.update()
                    ts.skipped += 1
                else:
                    if scaler is not None:
                        scaler.update()
                    ts.skipped, ts.bad_streak = ts.skipped + 1, ts.bad_streak + 1
                with warnings.catch_warnings():
                    # a skipped first step: the schedule counts steps, taken or not
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    lr_scheduler.step()
                ts.step += 1
                steps_in_rate += 1
                bar.update(1)
                if ts.step % tc.log_every == 0 or ts.step == tc.steps:
                    log_row(lr, time.perf_counter())
                if ts.bad_streak >= tc.max_bad_steps:
                    if ts.good + ts.skipped:
                        log_row(lr, time.perf_counter())
                    write_logs()
                    cure = "a smaller optimizer.lr or with train.grad_clip set"
                    then = (f"continue from the last checkpoint {saved['path']} (train.resume=auto) with {cure}" if saved["path"]
                            else f"no checkpoint was written: start again with {cure}")
                    raise TrainingDiverged(
                        f"training diverged: steps {ts.step - ts.bad_streak + 1}-{ts.step} had a non-finite loss or gradient "
                        f"(train.max_bad_steps={tc.max_bad_steps}); they were skipped and nothing was saved during them; {then}")
                if ts.step % tc.eval_every == 0 or ts.step == tc.steps:
                    model.eval()
                    run_eval()
                    model.train()
                # a checkpoint due while the latest step was skipped waits for a good step, so that
                # rotation never trades the last good checkpoint for one taken mid-divergence
                save_due = save_due or ts.step % tc.checkpoint_every == 0
                if (save_due and ts.bad_streak == 0) or ts.step == tc.steps:
                    save()
                if stop.signum is not None and ts.step < tc.steps:  # at the last step the run is complete
                    if saved["step"] != ts.step:
                        save()
                    write_logs()
                    log.warning("stopped by %s after step %d; saved %s", signal.Signals(stop.signum).name, ts.step, saved["path"])
                    raise TrainingInterrupted(stop.signum, ts.step, saved["path"])
    finally:
        bar.close()
        logger.close()
    wall = time.perf_counter() - t0
    write_logs()
    final = ts.eval_rows[-1] if ts.eval_rows else {}
    total_skipped = sum(int(r["skipped"]) for r in ts.loss_rows)
    return {"step": ts.step, "final": final, "model": model, "ema": ema, "wall_s": wall, "skipped_steps": total_skipped,
            "run_dir": run_dir}


def _build(node: DictConfig, path: str, *args) -> Any:
    """Build a `_partial_` node (optimizer, lr_scheduler) with the arguments known only now;
    constructor errors become one `ConfigError` naming `path`."""
    factory = instantiate(node, path)
    try:
        return factory(*args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: {err}") from err
