"""Training checkpoints: atomic, verified writes and `weights_only` loads.

A checkpoint is a dict of tensors and plain containers only (so `torch.load(weights_only=True)`
can read it without executing code): the `TrainState.state_dict()` of the run
(`sde_gen.train_state`: step, model, ema, optimizer, lr_scheduler, rng, metrics, accumulators) plus

    {"format": 1, "config": the resolved run config (plain dict), "event_shape": [int], "data_std": float,
     "data_stats": `sde_gen.data.stats.DataStats.as_dict()` (shape, levels, class count, normalisation)}

Writes go to a temporary file that is read back and checked before it atomically replaces the
target (`sde_gen.io.atomic_path`), so a crash, a full disk or a bad write never destroys the last
good checkpoint. A full disk is reported as `OSError(ENOSPC)` naming the checkpoint, a state with
non-finite weights is never written, rotation never deletes the newest checkpoint with finite
weights, and `prepare_checkpoint_dir` checks the folder and removes the temporary files of a save
that was killed. `load_trained` rebuilds the SDE, the dataset and the EMA model from the stored
config: the entry point of the sampling and likelihood apps. When the data set cannot be rebuilt
(its files are gone), the stored "data_stats" stand in for it (`DataStats`: everything sampling
needs); a checkpoint written before "data_stats" existed then fails in one line naming the cause.
`load_classifier` does the same for a noise-conditional classifier run (`loss=classifier`) and
`load_discrete` for a discrete-diffusion run (`sde=d3pm_*`, `sde_gen.discrete`), and each refuses
the other kinds in one line.

`export_trained` (the `sde-gen-export` command) writes a run's EMA weights as safetensors
(`model.safetensors`, tensors only) next to its config as YAML (`model.yaml`); both loaders accept
that folder, checking the config the same way and building registered classes only.

Checkpoints are data, not code: `load_checkpoint` runs `sde_gen.trust.check_checkpoint_config` on
the stored config before anything reads it (see there).
"""
from __future__ import annotations

import errno
import glob
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import OmegaConf

from .config import ConfigError, instantiate, register_configs
from .data.stats import DataStats
from .io import atomic_path
from .nets import build_classifier, build_score_model, model_kind
from .trust import CheckpointError, check_checkpoint_config

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_checkpoint_config", "latest_checkpoint",
           "checkpoint_path", "Trained", "load_trained", "load_classifier", "load_discrete", "checkpoint_kind",
           "check_checkpoint_dir", "prepare_checkpoint_dir", "nonfinite_weights", "export_trained"]

log = logging.getLogger(__name__)

FORMAT = 1
_REQUIRED = ("format", "step", "model", "ema", "optimizer", "rng", "config", "metrics")
_NAME = re.compile(r"ckpt_(\d+)\.pt$")
#: the temporary file of a checkpoint save (`sde_gen.io.atomic_path`: ".<name>.<random>.tmp")
_STALE_TMP = re.compile(r"^\.ckpt_\d+\.pt\..+\.tmp$")
#: the state entries whose tensors are the network weights (raw and EMA)
_WEIGHTS = ("model", "ema")
#: below this many free bytes a failed write of torch's zip writer is taken for a full disk
_NEARLY_FULL = 1 << 20


def checkpoint_path(directory: str, step: int) -> str:
    """`<directory>/ckpt_<step, 7 digits>.pt`."""
    return os.path.join(directory, f"ckpt_{step:07d}.pt")


def load_checkpoint(path: str, map_location=None, trusted_targets: Sequence[str] = ()) -> Dict[str, Any]:
    """Load and check a checkpoint with `torch.load(weights_only=True)`.

    The stored config is checked by `check_checkpoint_config` before the state is returned, so
    every reader (`load_trained`, training resume) refuses a tampered config the same way.

    Args:
        path: the checkpoint file.
        map_location: as for `torch.load`.
        trusted_targets: `_target_` strings of your own the stored config may name (see
            `check_checkpoint_config`).

    Raises:
        CheckpointError naming `path` when the file is missing, unreadable or incomplete, or naming
        the config key when the stored config would build something not allowed.
    """
    state = _read_checkpoint(path, map_location)
    try:
        check_checkpoint_config(state["config"], trusted_targets)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path!r}: {err}") from None
    return state


def _read_checkpoint(path: str, map_location=None) -> Dict[str, Any]:
    """`torch.load(weights_only=True)` and the structure check, without the config check (a run
    trusted through `trusted_targets` must still be able to verify its own writes)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, unpickling refused
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint {path!r} is not a sde_gen training checkpoint (missing {missing})")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} has format {state['format']}, expected {FORMAT}")
    return state


def nonfinite_weights(state: Dict[str, Any]) -> List[str]:
    """The names ("model.<key>", "ema.<key>") of the floating-point weight tensors of a checkpoint
    state that hold a NaN or an infinity; empty when every weight is finite."""
    bad = []
    for part in _WEIGHTS:
        for name, value in state.get(part, {}).items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"{part}.{name}")
    return bad


def save_checkpoint(path: str, state: Dict[str, Any], keep: Optional[int] = None) -> None:
    """Write `state` to `path` atomically after verifying that the written bytes load back.

    Args:
        path: target file (usually `checkpoint_path(dir, step)`).
        state: the checkpoint dict (see module docstring); "format" is filled in.
        keep: if given, delete all but the newest `keep` checkpoints in the same folder afterwards;
            the newest checkpoint with finite weights is never deleted.

    Raises:
        ValueError: an entry is missing, or a model / EMA weight is NaN or infinite (nothing is written).
        OSError: with errno ENOSPC naming `path` when the disk is full; the previous file is intact.
    """
    state = dict(state, format=FORMAT)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    bad = nonfinite_weights(state)
    if bad:
        raise ValueError(f"refusing to save checkpoint {path!r}: non-finite weights in {', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with atomic_path(path) as tmp:
            _write(state, tmp, directory)
            _read_checkpoint(tmp)  # never let a file that does not load replace a good one
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from err
        raise
    if keep is not None:
        for old in _rotation(path, keep):
            os.remove(old)


def _write(state: Dict[str, Any], tmp: str, directory: str) -> None:
    """`torch.save` into a file object we opened, so that a failed write keeps its errno (given a
    path, torch's zip writer reports a full disk as a RuntimeError such as "unexpected pos")."""
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
    except RuntimeError as err:
        if _disk_full(err, directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp) from err
        raise


def _disk_full(err: BaseException, directory: str) -> bool:
    """Whether a RuntimeError of `torch.save` stands for a full disk: an ENOSPC anywhere in its
    chain of causes, or a failed write of the zip writer while (almost) no space is left."""
    seen, visited = err, set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if not any(s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos", "iostream error")):
        return False
    try:
        return shutil.disk_usage(directory).free < _NEARLY_FULL
    except OSError:
        return False


def _rotation(path: str, keep: int) -> List[str]:
    """The checkpoints next to `path` to delete so that the newest `keep` remain, never `path`
    itself and never the newest checkpoint with finite weights.

    `path` was just written with finite weights, so the rule only costs a look inside files
    when checkpoints newer than `path` exist (older checkpoints, e.g. written before the NaN guard).
    """
    directory = os.path.dirname(os.path.abspath(path))
    ordered = _sorted_checkpoints(directory)
    target = os.path.abspath(path)
    doomed = [p for p in ordered[:-keep] if os.path.abspath(p) != target]
    kept = [p for p in ordered if p not in doomed]
    newer = lambda files: [p for p in reversed(files) if _step(p) > _step(path)]  # noqa: E731
    if any(_finite_file(p) for p in newer(kept)):
        return doomed
    for p in newer(doomed):
        if _finite_file(p):
            return [d for d in doomed if d != p]
    return doomed


def _step(path: str) -> int:
    return int(_NAME.search(path).group(1))


def _finite_file(path: str) -> bool:
    try:
        return not nonfinite_weights(load_checkpoint(path, map_location="cpu"))
    except CheckpointError:
        return False


def _sorted_checkpoints(directory: str):
    files = [p for p in glob.glob(os.path.join(directory, "ckpt_*.pt")) if _NAME.search(p)]
    return sorted(files, key=_step)


def check_checkpoint_dir(directory: str) -> None:
    """Raise `CheckpointError` if `directory` exists but is not a folder (e.g. a file named
    `checkpoints`); a missing folder is fine (it is created by `prepare_checkpoint_dir`)."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"the checkpoint folder {directory!r} exists but is not a folder; move it away or choose another run directory")


def prepare_checkpoint_dir(directory: str) -> List[str]:
    """Make `directory` ready for checkpoints before training starts.

    Creates it, checks that a file can be created in it, and deletes the temporary files
    (`.ckpt_*.pt.*.tmp`) that a save killed before its rename left behind.

    Returns:
        The stale temporary files that were removed.

    Raises:
        CheckpointError: `directory` is not a folder, cannot be created or is not writable.
    """
    check_checkpoint_dir(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise CheckpointError(f"the checkpoint folder {directory!r} is not writable ({err.strerror or err})") from err
    removed = []
    for name in sorted(os.listdir(directory)):
        if _STALE_TMP.match(name):
            os.remove(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def latest_checkpoint(path: str) -> Optional[str]:
    """The newest checkpoint for `path`: the file itself, or the highest-step `ckpt_*.pt` in the
    directory `path` or in its `checkpoints/` sub-folder (a run directory); None if there is none."""
    if os.path.isfile(path):
        return path
    for directory in (os.path.join(path, "checkpoints"), path):
        found = _sorted_checkpoints(directory)
        if found:
            return found[-1]
    return None


@dataclass
class Trained:
    """A trained model ready for sampling or likelihoods.

    Attributes:
        model: the `ScoreModel` with EMA (or raw) weights in eval mode; `model(x, t)` is the score
            (`model(x, t, y)` the class-conditional one). From `load_classifier`: the
            `NoiseConditionalClassifier`, `model(x, t)` -> (B, C) logits.
        sde: the forward SDE of the run (the discrete forward process for `load_discrete`).
        dataset: the dataset of the run (rebuilt from the stored config), or the `DataStats`
            stored in the checkpoint when the data files are gone.
        config: the resolved run config as a plain dict.
        step: the training step of the checkpoint.
        path: the checkpoint file that was loaded.
        num_classes: C for a class-conditional model or a classifier (labels 0..C-1), None for
            an unconditional model.
    """

    model: torch.nn.Module
    sde: Any
    dataset: Any
    config: Dict[str, Any]
    step: int
    path: str
    num_classes: Optional[int] = None


def load_trained(
    path: str, device=None, ema: bool = True, dataset: bool = True, trusted_targets: Sequence[str] = ()
) -> Trained:
    """Rebuild the model of a training run from a checkpoint file or a run directory.

    The stored config is checked (`check_checkpoint_config`) before anything is imported or built:
    it may build only the library's registered SDEs, datasets, backbones and samplers, plus the
    classes you trust here.

    Args:
        path: a `ckpt_*.pt` file, a run directory (its newest checkpoint is used), or an export
            folder of `export_trained` / `sde-gen-export` (model.safetensors + model.yaml; built
            from registered classes only, so `trusted_targets` must be empty).
        device: where to put the model (None: CPU).
        ema: load the EMA weights (True) or the raw training weights (an export holds the one set
            it was written with; ema=False needs a raw export).
        dataset: also rebuild the dataset (set False to skip loading image files).
        trusted_targets: `_target_` strings of your own the stored config may build, e.g.
            ["mypkg.nets.MyNet"] (or register a backbone once with `sde_gen.nets.register_backbone`).

    Raises:
        CheckpointError naming the file when there is no checkpoint or it cannot be read, when it
        holds a noise-conditional classifier (load that with `load_classifier`), and naming the
        config key and the target when the stored config is refused.
    """
    return _load(path, "score", device, ema, dataset, trusted_targets)


def load_classifier(path: str, device=None, ema: bool = True, dataset: bool = True) -> Trained:
    """Rebuild the noise-conditional classifier of a classifier run (`loss=classifier`).

    Args:
        path: a `ckpt_*.pt` file, or a run directory (its newest checkpoint is used).
        device: where to put the classifier (None: CPU).
        ema: load the EMA weights (True) or the raw training weights.
        dataset: also rebuild the dataset.

    Returns:
        `Trained` whose `model` is the `NoiseConditionalClassifier` (eval mode, no gradients for
        its weights; gradients with respect to x still flow, as classifier guidance needs) and
        whose `num_classes` is C.

    Raises:
        CheckpointError naming the file when there is no checkpoint, it cannot be read, it holds a
        score model (load that with `load_trained`) or its stored config is refused.
    """
    return _load(path, "classifier", device, ema, dataset, ())


#: the files of an export (`export_trained`): the weights and the config next to them
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "model.yaml"
EXPORT_FORMAT = 1


def _export_dir(path: str) -> Optional[str]:
    """The export folder `path` names (the folder, or one of its two files), None for anything else."""
    folder = os.path.dirname(path) if os.path.basename(path) in (EXPORT_WEIGHTS, EXPORT_CONFIG) else path
    if os.path.isfile(os.path.join(folder, EXPORT_CONFIG)) or os.path.isfile(os.path.join(folder, EXPORT_WEIGHTS)):
        return folder
    return None


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError(f"safetensors is needed for exports: pip install 'sde_gen[export]' ({err})",
                          name="safetensors") from err
    return safetensors.torch


def export_trained(path: str, out_dir: Optional[str] = None, ema: bool = True) -> Dict[str, str]:
    """Write the weights of a training run as safetensors and its config as YAML.

    `<out_dir>/model.safetensors` holds the `ScoreModel` (or classifier) state dict, EMA weights by
    default (no pickle: the file is tensors only); `<out_dir>/model.yaml` the resolved run config
    (`config:`, with `config.model` the network) plus `format`, `step`, `weights` ("ema" or "raw"),
    `event_shape`, `data_std`, `data_stats`. `load_trained` (and `load_classifier`) accept the folder. Both files
    are written atomically.

    Args:
        path: a run directory (its newest checkpoint) or a `ckpt_*.pt` file.
        out_dir: where to write (None: `<run dir>/export`).
        ema: export the EMA weights (True) or the raw training weights.

    Returns:
        {"weights": path of model.safetensors, "config": path of model.yaml}.

    Raises:
        CheckpointError naming the file when there is no checkpoint, it cannot be read or its
        stored config is refused; ImportError when safetensors is missing.
    """
    st = _safetensors()
    file = latest_checkpoint(path)
    if file is None:
        raise CheckpointError(f"no checkpoint (ckpt_*.pt) found at {path!r}")
    state = load_checkpoint(file, map_location="cpu")
    if out_dir is None:
        run = os.path.dirname(os.path.dirname(os.path.abspath(file)))
        out_dir = os.path.join(run if os.path.basename(os.path.dirname(file)) == "checkpoints" else os.path.dirname(file), "export")
    weights = {k: v.detach().contiguous().clone() for k, v in _weights(state, ema).items()}
    meta = {"format": EXPORT_FORMAT, "step": int(state["step"]), "weights": "ema" if ema else "raw",
            "data_std": float(state.get("data_std", 1.0)), "config": state["config"]}
    if "event_shape" in state:
        meta["event_shape"] = [int(n) for n in state["event_shape"]]
    if "data_stats" in state:  # so an exported image model samples without its data files
        meta["data_stats"] = state["data_stats"]
    os.makedirs(out_dir, exist_ok=True)
    out = {"weights": os.path.join(out_dir, EXPORT_WEIGHTS), "config": os.path.join(out_dir, EXPORT_CONFIG)}
    with atomic_path(out["weights"]) as tmp:
        st.save_file(weights, tmp, metadata={"format": f"sde_gen-export-{EXPORT_FORMAT}", "weights": meta["weights"]})
    with atomic_path(out["config"]) as tmp:
        OmegaConf.save(OmegaConf.create(meta), tmp)
    return out


def _weights(state: Dict[str, Any], ema: bool) -> Dict[str, torch.Tensor]:
    if ema:
        # AveragedModel keys are "module.<name>" plus the "n_averaged" counter
        return {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    return state["model"]


def _read_export(folder: str, ema: bool, trusted_targets: Sequence[str]) -> Dict[str, Any]:
    """The parts of an export `_load` needs, checked like a checkpoint's (tensors only, a config
    that builds registered classes only)."""
    if trusted_targets:
        raise CheckpointError(f"export {folder!r}: an export builds registered classes only (trusted_targets is for "
                              "checkpoints); register a backbone of your own with sde_gen.nets.register_backbone")
    files = {name: os.path.join(folder, name) for name in (EXPORT_CONFIG, EXPORT_WEIGHTS)}
    missing = [name for name, f in files.items() if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"export {folder!r} is incomplete (missing {missing})")
    try:
        meta = OmegaConf.to_container(OmegaConf.load(files[EXPORT_CONFIG]), resolve=False)
    except Exception as err:
        raise CheckpointError(f"export {files[EXPORT_CONFIG]!r} is not readable YAML ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"export {files[EXPORT_CONFIG]!r} is not a sde_gen export of format {EXPORT_FORMAT} "
                              "(needs format and config)")
    if not isinstance(meta.get("step", 0), int) or not isinstance(meta.get("data_std", 1.0), (int, float)):
        raise CheckpointError(f"export {files[EXPORT_CONFIG]!r}: step must be an integer and data_std a number; "
                              f"got {meta.get('step')!r}, {meta.get('data_std')!r}")
    if not ema and meta.get("weights") != "raw":
        raise CheckpointError(f"export {folder!r} holds the {meta.get('weights')!r} weights only; load it with ema=True")
    try:
        check_checkpoint_config(meta["config"])
    except CheckpointError as err:
        raise CheckpointError(f"export {files[EXPORT_CONFIG]!r}: {err}") from None
    try:
        weights = _safetensors().load_file(files[EXPORT_WEIGHTS], device="cpu")
    except ImportError:
        raise
    except Exception as err:
        raise CheckpointError(f"export {files[EXPORT_WEIGHTS]!r} is truncated or corrupt ({type(err).__name__}: {err})") from err
    return {"file": folder, "config": meta["config"], "step": meta.get("step", 0), "data_std": meta.get("data_std", 1.0),
            "weights": weights, **({"event_shape": meta["event_shape"]} if "event_shape" in meta else {}),
            **({"data_stats": meta["data_stats"]} if "data_stats" in meta else {})}


def _rebuild_data(cfg, state: Dict[str, Any], file: str):
    """The run's data set from the stored config or, when that fails (the data files are gone), the
    `DataStats` stored in the checkpoint."""
    try:
        return instantiate(cfg.data, "data")
    except ConfigError as err:
        if "data_stats" not in state:
            raise CheckpointError(f"checkpoint {file!r} cannot be used without its training data, which cannot be "
                                  f"rebuilt ({err}); it predates the data statistics stored in checkpoints: put the data "
                                  "back where config.data points, or load it with dataset=False") from None
        try:
            stats = DataStats.from_dict(state["data_stats"])
        except ValueError as bad:
            raise CheckpointError(f"checkpoint {file!r}: {bad}") from None
        log.warning("the data of checkpoint %s cannot be rebuilt (%s); using the data statistics stored in it (%r)",
                    file, err, stats)
        return stats



def load_discrete(path: str, device=None, ema: bool = True, dataset: bool = True) -> Trained:
    """Rebuild the x_0-logit network of a discrete-diffusion run (`sde=d3pm_*`, `model=token_transformer`).

    Args:
        path: a `ckpt_*.pt` file, or a run directory (its newest checkpoint is used).
        device: where to put the model (None: CPU).
        ema: load the EMA weights (True) or the raw training weights.
        dataset: also rebuild the token data set.

    Returns:
        `Trained` whose `model(x_t, t)` returns (B, *event, K) logits of p(x_0 | x_t) (eval mode, no
        gradients) and whose `sde` is the discrete forward process (`sde_gen.discrete`).

    Raises:
        CheckpointError naming the file when there is no checkpoint, it cannot be read, it holds a
        continuous model (load that with `load_trained`) or its stored config is refused.
    """
    return _load(path, "discrete", device, ema, dataset, ())


_LOADERS = {"classifier": ("a noise-conditional classifier", "load_classifier"), "score": ("a score model", "load_trained"),
            "discrete": ("a discrete-diffusion model", "load_discrete")}


def checkpoint_kind(path: str, trusted_targets: Sequence[str] = ()) -> str:
    """What the checkpoint at `path` (file, run directory or export folder) holds: "score", "classifier" or "discrete"
    (its stored `model._target_`), after the same checks as every loader.

    Raises:
        CheckpointError when there is no checkpoint or it cannot be read or its config is refused.
    """
    export = _export_dir(path)
    if export is not None:
        file, config = export, _read_export(export, True, trusted_targets)["config"]
    else:
        file = latest_checkpoint(path)
        if file is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) found at {path!r}")
        config = load_checkpoint(file, map_location="cpu", trusted_targets=trusted_targets)["config"]
    model = config.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"checkpoint {file!r}: config.model with a _target_ is missing")
    return model_kind(OmegaConf.create(model))


def _read_checkpoint_source(path: str, ema: bool, trusted_targets: Sequence[str]) -> Dict[str, Any]:
    file = latest_checkpoint(path)
    if file is None:
        raise CheckpointError(f"no checkpoint (ckpt_*.pt) found at {path!r}")
    state = load_checkpoint(file, map_location="cpu", trusted_targets=trusted_targets)
    return {"file": file, "config": state["config"], "step": state["step"], "data_std": state.get("data_std", 1.0),
            "weights": _weights(state, ema), **({"event_shape": state["event_shape"]} if "event_shape" in state else {}),
            **({"data_stats": state["data_stats"]} if "data_stats" in state else {})}


def _load(path: str, kind: str, device, ema: bool, dataset: bool, trusted_targets: Sequence[str]) -> Trained:
    """`load_trained` (kind "score"), `load_classifier` ("classifier") and `load_discrete` ("discrete") of a
    checkpoint or an export."""
    export = _export_dir(path)
    source = (_read_export(export, ema, trusted_targets) if export is not None
              else _read_checkpoint_source(path, ema, trusted_targets))
    file, stored = source["file"], source["config"]
    for key in ("sde", "model") + (("data",) if dataset else ()):
        if not isinstance(stored.get(key), dict) or "_target_" not in stored[key]:
            raise CheckpointError(f"checkpoint {file!r}: config.{key} with a _target_ is missing")
    if "event_shape" in source:
        shape = source["event_shape"]
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise CheckpointError(f"checkpoint {file!r}: event_shape must be a list of integers >= 1; got {shape!r}")
    elif not dataset:
        raise CheckpointError(f"checkpoint {file!r} stores no event_shape; load it with dataset=True")
    cfg = OmegaConf.create(stored)
    stored_kind = model_kind(cfg.model)
    if stored_kind != kind:
        held, loader = _LOADERS[stored_kind]
        wanted = _LOADERS[kind][0]
        raise CheckpointError(f"checkpoint {file!r} holds {held} (model._target_={stored['model']['_target_']!r}), "
                              f"not {wanted}; load it with {loader}")
    register_configs()
    sde = instantiate(cfg.sde, "sde")
    data = _rebuild_data(cfg, source, file) if dataset else None
    event_shape = tuple(source["event_shape"]) if "event_shape" in source else tuple(data.event_shape)
    if kind == "classifier":
        model = build_classifier(cfg.model, sde, event_shape, source["data_std"])
    elif kind == "discrete":
        from .discrete.nets import build_discrete_model

        model = build_discrete_model(cfg.model, sde, event_shape)
    else:
        model = build_score_model(cfg.model, sde, event_shape, source["data_std"], trusted_targets=trusted_targets)
    model.load_state_dict(source["weights"])
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    if kind == "discrete":
        return Trained(model=model, sde=sde.to(device) if device is not None else sde, dataset=data, config=stored,
                       step=int(source["step"]), path=file)
    return Trained(model=model, sde=model.sde, dataset=data, config=stored, step=int(source["step"]), path=file,
                   num_classes=getattr(model, "num_classes", None))
