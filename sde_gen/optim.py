"""Optimisers and learning-rate schedules of the training app, as `_target_` config nodes.

The schedule is the linear warm-up of Goyal et al. 2017 followed by a constant rate or the
half-cosine decay to 0 of Loshchilov & Hutter 2017 ("SGDR"), over the steps after the warm-up:

    lr(s) = lr_0 * min(1, (s + 1) / (W + 1))                              s < W or decay = "constant"
    lr(s) = lr_0 * 1/2 (1 + cos(pi * min(1, (s - W) / max(1, S - W))))    s >= W, decay = "cosine"

with W warm-up steps and S total steps. It runs through `torch.optim.lr_scheduler.LambdaLR`, whose
factor is exactly 1 wherever the two pieces meet, so `lr_0 * factor` rounds the same as the
closed form above, bit for bit.

`OPTIMIZERS` and `LR_SCHEDULERS` are the registries a stored checkpoint config may name
(`sde_gen.config.component_registries`).
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch.optim.lr_scheduler import LambdaLR

from ._validation import check_choice

__all__ = ["DECAYS", "WarmupSchedule", "WarmupLR", "OPTIMIZERS", "LR_SCHEDULERS"]

#: what follows the warm-up
DECAYS = ("cosine", "constant")


class WarmupSchedule:
    """The multiplicative factor lr(s) / lr_0 of the module docstring; a callable object (not a
    lambda) so that `LambdaLR.state_dict` can store it.

    Args:
        warmup: W, linear warm-up steps (0: none).
        total_steps: S, the step at which the cosine reaches 0 (ignored for "constant").
        decay: "cosine" or "constant".
    """

    def __init__(self, warmup: int, total_steps: int, decay: str):
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0; got {warmup!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1; got {total_steps!r}")
        check_choice("decay", decay, DECAYS)
        self.warmup, self.total_steps, self.decay = warmup, total_steps, decay

    def __call__(self, step: int) -> float:
        factor = min(1.0, (step + 1) / (self.warmup + 1))
        if self.decay == "cosine" and step >= self.warmup:
            # factor is exactly 1.0 here, so lr_0 * factor * c == lr_0 * c in floating point
            progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
            factor *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return factor


class WarmupLR(LambdaLR):
    """Linear warm-up, then cosine decay to 0 or a constant rate (`WarmupSchedule`).

    Call `step()` once per training step, skipped steps included: the rate is a function of the
    step counter alone.

    Resume: `load_state_dict` restores the step counter only; the schedule itself and the base
    rate come from the *current* config, so a resumed run with a larger `total_steps` (an extended
    run) or another `optimizer.lr` follows the new schedule from the stored step on, as the
    schedule's closed form says.

    Args:
        optimizer: the wrapped optimiser; its `lr` is lr_0.
        warmup, total_steps, decay: see `WarmupSchedule`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int = 200, total_steps: int = 6000,
                 decay: str = "cosine"):
        super().__init__(optimizer, WarmupSchedule(warmup, total_steps, decay))

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # The optimiser's load_state_dict has just put the stored lr / initial_lr back into its
        # groups; the configured ones (self.base_lrs, set at construction) win, as does the
        # configured schedule, and the rate is recomputed at the restored step.
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        for group, base, schedule in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * schedule(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


#: optimisers a config (and a stored checkpoint config) may build: config name -> class
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: learning-rate schedulers: config name -> class
LR_SCHEDULERS = {"warmup": WarmupLR}
