"""Training checkpoints: atomic, verified writes and `weights_only` loads.

A checkpoint is a dict of tensors and plain containers only (so `torch.load(weights_only=True)`
can read it without executing code):

    {"format": 1, "step": int, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "rng": {"train": ByteTensor, "torch": ByteTensor}, "config": plain dict, "metrics": list of dicts}

Writes go to a temporary file that is read back and checked before it atomically replaces the
target (`sde_gen.io.atomic_path`), so a crash, a full disk or a bad write never destroys the last
good checkpoint. `load_trained` rebuilds the SDE, the dataset and the EMA model from the stored
config: the entry point of the sampling and likelihood apps.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf

from .config import instantiate, register_configs
from .io import atomic_path
from .nets import build_score_model

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "checkpoint_path", "Trained", "load_trained"]

FORMAT = 1
_REQUIRED = ("format", "step", "model", "ema", "optimizer", "rng", "config", "metrics")
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a sde_gen checkpoint."""


def checkpoint_path(directory: str, step: int) -> str:
    """`<directory>/ckpt_<step, 7 digits>.pt`."""
    return os.path.join(directory, f"ckpt_{step:07d}.pt")


def load_checkpoint(path: str, map_location=None) -> Dict[str, Any]:
    """Load and check a checkpoint with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError naming `path` when the file is missing, unreadable or incomplete.
    """
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


def save_checkpoint(path: str, state: Dict[str, Any], keep: Optional[int] = None) -> None:
    """Write `state` to `path` atomically after verifying that the written bytes load back.

    Args:
        path: target file (usually `checkpoint_path(dir, step)`).
        state: the checkpoint dict (see module docstring); "format" is filled in.
        keep: if given, delete all but the newest `keep` checkpoints in the same folder afterwards.
    """
    state = dict(state, format=FORMAT)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        load_checkpoint(tmp)  # never let a file that does not load replace a good one
    if keep is not None:
        directory = os.path.dirname(os.path.abspath(path))
        for old in _sorted_checkpoints(directory)[:-keep]:
            if os.path.abspath(old) != os.path.abspath(path):
                os.remove(old)


def _sorted_checkpoints(directory: str):
    files = [p for p in glob.glob(os.path.join(directory, "ckpt_*.pt")) if _NAME.search(p)]
    return sorted(files, key=lambda p: int(_NAME.search(p).group(1)))


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
        model: the `ScoreModel` with EMA (or raw) weights in eval mode; `model(x, t)` is the score.
        sde: the forward SDE of the run.
        dataset: the dataset of the run (rebuilt from the stored config).
        config: the resolved run config as a plain dict.
        step: the training step of the checkpoint.
        path: the checkpoint file that was loaded.
    """

    model: torch.nn.Module
    sde: Any
    dataset: Any
    config: Dict[str, Any]
    step: int
    path: str


def load_trained(path: str, device=None, ema: bool = True, dataset: bool = True) -> Trained:
    """Rebuild the model of a training run from a checkpoint file or a run directory.

    Args:
        path: a `ckpt_*.pt` file, or a run directory (its newest checkpoint is used).
        device: where to put the model (None: CPU).
        ema: load the EMA weights (True) or the raw training weights.
        dataset: also rebuild the dataset (set False to skip loading image files).

    Raises:
        CheckpointError naming the file when there is no checkpoint or it cannot be read.
    """
    file = latest_checkpoint(path)
    if file is None:
        raise CheckpointError(f"no checkpoint (ckpt_*.pt) found at {path!r}")
    state = load_checkpoint(file, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    register_configs()
    sde = instantiate(cfg.sde, "sde")
    data = instantiate(cfg.data, "data") if dataset else None
    event_shape = tuple(state["event_shape"]) if "event_shape" in state else tuple(data.event_shape)
    model = build_score_model(cfg.model, sde, event_shape, state.get("data_std", 1.0))
    if ema:
        # AveragedModel keys are "module.<name>" plus the "n_averaged" counter
        weights = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    else:
        weights = state["model"]
    model.load_state_dict(weights)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return Trained(model=model, sde=model.sde, dataset=data, config=state["config"], step=int(state["step"]), path=file)
