"""The state of a training run: what a checkpoint holds to continue bit for bit.

`TrainState` gathers the network, its EMA (`torch.optim.swa_utils.AveragedModel`), the optimiser,
the learning-rate scheduler, the generator that draws every batch, time and noise, the global RNG
state (network initialisation, dropout), the step, the loss accumulators of the current log
interval and the logged tables (loss, evaluation and timing rows). `state_dict()` is the checkpoint
(with the run's config, event shape and data std added by the training loop); `load_state_dict()`
puts it back.

RNG states: the training generator (on the training device), the CPU generator and, whenever CUDA
is present, the generator of every CUDA device (`torch.cuda.get_rng_state_all`: dropout and any
other global draw on the GPUs), so a resume on the same machine is as exact as its kernels allow
(bit for bit on the CPU; on a GPU, non-deterministic kernels such as atomics-based reductions can
still differ unless `torch.use_deterministic_algorithms` is on). A checkpoint without them (written
before they were stored, or on a machine without CUDA) loads and leaves the CUDA generators as they
are; one from a machine with another CUDA device count restores the devices both have.

Checkpoint layout (tensors and plain containers only, so `torch.load(weights_only=True)` reads it):

    {"step": int, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "lr_scheduler": state_dict, "rng": {"train": ByteTensor, "torch": ByteTensor[, "cuda_all": [ByteTensor]]},
     ["grad_scaler": state_dict (train.precision=fp16)],
     "metrics": {"loss": [row], "eval": [row], "timing": [row]},
     "accumulators": {"loss_sum": 0-d tensor, "good": int, "skipped": int, "bad_streak": int}}
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

__all__ = ["TrainState"]


class TrainState:
    """Everything of a training run that changes from step to step.

    Args:
        model: the score network being trained.
        ema: its `AveragedModel`.
        optimizer: the optimiser of `model`'s parameters.
        lr_scheduler: the scheduler of `optimizer` (stepped once per step, skipped steps included).
        generator: the training stream's `torch.Generator` (its device is the training device).
        scaler: the fp16 run's `torch.amp.GradScaler` (None otherwise).

    Attributes:
        step: optimiser steps taken (skipped steps included).
        loss_rows, eval_rows, timing_rows: the logged tables (lists of dicts).
        loss_sum: 0-d tensor on the training device, the sum of the finite losses of the current
            log interval (kept on the device: one host sync per log row).
        good, skipped: finite and skipped steps of the current log interval.
        bad_streak: consecutive skipped steps up to now.
    """

    def __init__(self, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, scaler=None):
        self.model, self.ema, self.optimizer, self.lr_scheduler = model, ema, optimizer, lr_scheduler
        self.scaler = scaler
        self.generator = generator
        self.device = generator.device
        self.step = 0
        self.loss_rows: List[Dict[str, Any]] = []
        self.eval_rows: List[Dict[str, Any]] = []
        self.timing_rows: List[Dict[str, Any]] = []
        self.loss_sum = torch.zeros((), device=self.device)
        self.good, self.skipped, self.bad_streak = 0, 0, 0

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint entries (module docstring); tensors are references or copies, never views
        that a later step changes (the loss sum is cloned)."""
        rng = {"train": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_all"] = list(torch.cuda.get_rng_state_all())
        extra = {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}
        return {**extra,
            "step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(), "rng": rng,
            "metrics": {"loss": self.loss_rows, "eval": self.eval_rows, "timing": self.timing_rows},
            "accumulators": {"loss_sum": self.loss_sum.clone(), "good": self.good, "skipped": self.skipped,
                             "bad_streak": self.bad_streak},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore from a checkpoint state (extra entries such as "config" are ignored).

        Checkpoints written before the scheduler was stored restart it at the stored step, and
        those before the accumulators start a fresh log interval.
        """
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        # the scheduler after the optimiser: it sets the groups' rates from the configured schedule
        self.lr_scheduler.load_state_dict(state.get("lr_scheduler") or {"last_epoch": self.step})
        self.generator.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        _set_cuda_rng(state["rng"], self.device)
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        # checkpoints before the skip counter stored loss rows as [step, loss, lr, steps/s]
        self.loss_rows = [dict(r) if isinstance(r, dict) else {"step": r[0], "loss": r[1], "lr": r[2], "skipped": 0}
                          for r in state["metrics"]["loss"]]
        self.eval_rows = list(state["metrics"]["eval"])
        self.timing_rows = [dict(r) for r in state["metrics"].get("timing", [])]
        acc = state.get("accumulators")
        if acc is not None:
            self.loss_sum = acc["loss_sum"].to(self.device)
            self.good, self.skipped, self.bad_streak = int(acc["good"]), int(acc["skipped"]), int(acc["bad_streak"])


def _set_cuda_rng(rng: Dict[str, Any], device: torch.device) -> None:
    """Restore the stored CUDA generators, of every device both machines have ("cuda_all"), or of
    the training device alone (checkpoints that stored only its state as "cuda")."""
    if not torch.cuda.is_available():
        return
    if "cuda_all" in rng:
        states = list(rng["cuda_all"])[: torch.cuda.device_count()]
        for index, st in enumerate(states):
            torch.cuda.set_rng_state(st, index)
    elif "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
