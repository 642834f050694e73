"""The state of a training run: what a checkpoint holds to continue bit for bit.

`TrainState` gathers the network, its EMA (`torch.optim.swa_utils.AveragedModel`), the optimiser,
the learning-rate scheduler, the generator that draws every batch, time and noise, the global RNG
state (network initialisation, dropout), the step, the loss accumulators of the current log
interval and the logged tables (loss, evaluation and timing rows). `state_dict()` is the checkpoint
(with the run's config, event shape and data std added by the training loop); `load_state_dict()`
puts it back.

Checkpoint layout (tensors and plain containers only, so `torch.load(weights_only=True)` reads it):

    {"step": int, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "lr_scheduler": state_dict, "rng": {"train": ByteTensor, "torch": ByteTensor[, "cuda": ...]},
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

    Attributes:
        step: optimiser steps taken (skipped steps included).
        loss_rows, eval_rows, timing_rows: the logged tables (lists of dicts).
        loss_sum: 0-d tensor on the training device, the sum of the finite losses of the current
            log interval (kept on the device: one host sync per log row).
        good, skipped: finite and skipped steps of the current log interval.
        bad_streak: consecutive skipped steps up to now.
    """

    def __init__(self, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator):
        self.model, self.ema, self.optimizer, self.lr_scheduler = model, ema, optimizer, lr_scheduler
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
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
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
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        # checkpoints before the skip counter stored loss rows as [step, loss, lr, steps/s]
        self.loss_rows = [dict(r) if isinstance(r, dict) else {"step": r[0], "loss": r[1], "lr": r[2], "skipped": 0}
                          for r in state["metrics"]["loss"]]
        self.eval_rows = list(state["metrics"]["eval"])
        self.timing_rows = [dict(r) for r in state["metrics"].get("timing", [])]
        acc = state.get("accumulators")
        if acc is not None:
            self.loss_sum = acc["loss_sum"].to(self.device)
            self.good, self.skipped, self.bad_streak = int(acc["good"]), int(acc["skipped"]), int(acc["bad_streak"])
