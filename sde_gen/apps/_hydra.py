"""One way for every Hydra app to start: `hydra_app(config_name, task, argv)`.

It registers the schemas, points Hydra at the configs shipped inside the package (so the apps run
from any working directory), and turns the package's own errors into one line on stderr with exit
code 2 (`HYDRA_FULL_ERROR=1` shows the traceback instead). A training run stopped by SIGINT or
SIGTERM after saving its checkpoint prints one line and exits with 128 + the signal number
(130, 143), with or without `HYDRA_FULL_ERROR`.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from omegaconf import DictConfig

from ..checkpoint import CheckpointError
from ..config import CONF_DIR, ConfigError, register_configs
from ..training import TrainingDiverged, TrainingInterrupted

__all__ = ["USER_ERRORS", "hydra_app", "one_line_errors"]

#: errors that describe bad input rather than a bug: reported in one line
USER_ERRORS = (ConfigError, CheckpointError, ValueError, TrainingDiverged)

Task = Callable[[DictConfig, str, Dict[str, str]], Any]


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "sde_gen"


def one_line_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn()`; a user error (or a full disk) becomes one stderr line and `SystemExit(2)`; a
    `TrainingInterrupted` one line and `SystemExit(128 + signal number)`."""
    try:
        return _user_errors_in_one_line(fn)
    except TrainingInterrupted as err:
        print(f"{_prog()}: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def _user_errors_in_one_line(fn: Callable[[], Any]) -> Any:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return fn()
    try:
        return fn()
    except USER_ERRORS as err:
        print(f"{_prog()}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"{_prog()}: error: no space left on device ({err.filename or err})", file=sys.stderr)
        raise SystemExit(2) from None


def hydra_app(config_name: str, task: Task, argv: Optional[Sequence[str]] = None) -> None:
    """Run `task(cfg, run_dir, choices)` as a Hydra app on `sde_gen/conf/<config_name>.yaml`.

    Args:
        config_name: the primary config.
        task: receives the composed config, Hydra's output directory for this run and the chosen
            config-group options (e.g. {"sampler": "heun"}).
        argv: command-line overrides for in-process use (None: `sys.argv[1:]`).
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()

    def entry(cfg: DictConfig) -> Any:
        hc = HydraConfig.get()
        return one_line_errors(lambda: task(cfg, hc.runtime.output_dir, dict(hc.runtime.choices)))

    app = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)(entry)
    if argv is None:
        app()
        return
    saved = sys.argv
    sys.argv = [saved[0] if saved else config_name, *argv]
    try:
        app()
    finally:
        sys.argv = saved
