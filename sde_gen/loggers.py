"""Training loggers: the `logger:` config group of `sde-gen-train`.

A logger receives the full tables of the run (loss rows, timing rows, evaluation rows) each time
one grows and writes them to the run directory:

* `CSVLogger` (default): `loss.csv`, `timing.csv` and `metrics.csv`, each rewritten whole and
  atomically (`sde_gen.io.atomic_write_text`) as training goes. The tables are part of the
  checkpoint (`sde_gen.train_state.TrainState`), so after a crash or a kill the resumed run
  rewrites the files from the checkpoint's rows and they end identical to an uninterrupted run's.
* `TensorBoardLogger`: the same CSV files, plus TensorBoard scalars (`train/loss`,
  `train/skipped`, `eval/<metric>`) under `<run_dir>/<log_dir>`. TensorBoard is an optional extra
  (`pip install sde_gen[tensorboard]`); without it one warning line is logged, once, and only the
  CSV files are written.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Dict, List

from .io import atomic_write_text

__all__ = ["CSVLogger", "TensorBoardLogger", "LOGGERS", "write_csv"]

log = logging.getLogger(__name__)
_WARNED = False


def write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    """Write `rows` (dicts; the header is the union of their keys in first-seen order) atomically."""
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class CSVLogger:
    """`loss.csv`, `timing.csv` and `metrics.csv` in `run_dir`, written as training goes.

    Args:
        run_dir: the run directory (given by the training loop, not by the config).
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def log_train(self, loss_rows: List[Dict[str, Any]], timing_rows: List[Dict[str, Any]]) -> None:
        """Called after each loss log row with the whole tables so far."""
        write_csv(os.path.join(self.run_dir, "loss.csv"), loss_rows)
        write_csv(os.path.join(self.run_dir, "timing.csv"), timing_rows)

    def log_eval(self, eval_rows: List[Dict[str, Any]]) -> None:
        """Called after each evaluation with all evaluation rows so far."""
        write_csv(os.path.join(self.run_dir, "metrics.csv"), eval_rows)

    def close(self) -> None:
        """Release what the logger holds (nothing for CSV files)."""


class TensorBoardLogger(CSVLogger):
    """The CSV files of `CSVLogger` plus TensorBoard scalars (an optional extra).

    Args:
        run_dir: the run directory (given by the training loop).
        log_dir: the event folder, relative to `run_dir`.
    """

    def __init__(self, run_dir: str, log_dir: str = "tb"):
        super().__init__(run_dir)
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(f"log_dir must be a non-empty folder name; got {log_dir!r}")
        self.log_dir, self.writer = log_dir, None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            global _WARNED
            if not _WARNED:
                log.warning("logger=tensorboard but the tensorboard package is not installed "
                            "(pip install 'sde_gen[tensorboard]'); writing the CSV files only")
                _WARNED = True
            self._make_writer = None
        else:
            # the event folder is created at the first record, not when the config is checked
            self._make_writer = lambda: SummaryWriter(os.path.join(run_dir, log_dir))

    def _scalars(self, prefix: str, row: Dict[str, Any]) -> None:
        if self._make_writer is None:
            return
        if self.writer is None:
            self.writer = self._make_writer()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, row["step"])

    def log_train(self, loss_rows, timing_rows) -> None:
        super().log_train(loss_rows, timing_rows)
        if loss_rows:
            self._scalars("train", {k: v for k, v in loss_rows[-1].items() if k in ("step", "loss", "skipped")})

    def log_eval(self, eval_rows) -> None:
        super().log_eval(eval_rows)
        if eval_rows:
            self._scalars("eval", eval_rows[-1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


#: loggers a config (and a stored checkpoint config) may build: config name -> class
LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}
