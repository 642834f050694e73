"""One way for every Hydra app to start: `hydra_app(config_name, task, argv)`.

It registers the schemas, points Hydra at the configs shipped inside the package (so the apps run
from any working directory), names the Hydra job after the app (its log file and `--help`), and
turns bad input into one line on stderr with exit code 2:

* the package's own errors raised by the task (`ConfigError`, `CheckpointError`, `ValueError`) and
  a full disk;
* Hydra's and OmegaConf's errors raised while the configuration is composed, before the task runs
  (an unknown config-group option, a misspelt key, an override that does not parse).

`HYDRA_FULL_ERROR=1` shows the traceback instead. Any other exception is a bug and keeps its
traceback.

A training run stopped by SIGINT or SIGTERM after saving its checkpoint prints one line and exits
with 128 + the signal number (130, 143), with or without `HYDRA_FULL_ERROR`.

It also registers the OmegaConf resolver `sde_gen.safe_dirname`, which the app configs use to build
a sweep job's folder name from its overrides without `/` or `..` (see `safe_dirname`), and
`sde_gen.group_options`, which lists in `--help` only the config groups an app uses (Hydra's own
`$APP_CONFIG_GROUPS` lists every group of the shared config folder; see `group_options`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..checkpoint import CheckpointError
from ..config import CONF_DIR, ConfigError, register_configs
from ..training import TrainingDiverged, TrainingInterrupted

__all__ = ["USER_ERRORS", "hydra_app", "one_line_errors", "one_line", "safe_dirname", "SAFE_DIRNAME_RESOLVER",
           "group_options", "GROUP_OPTIONS_RESOLVER"]

#: errors that describe bad input rather than a bug: reported in one line
USER_ERRORS = (ConfigError, CheckpointError, ValueError, TrainingDiverged)

#: name of the OmegaConf resolver wrapping `safe_dirname` (used in the apps' `hydra.sweep.subdir`)
SAFE_DIRNAME_RESOLVER = "sde_gen.safe_dirname"
#: name of the OmegaConf resolver wrapping `group_options` (used in the apps' `hydra.help.template`)
GROUP_OPTIONS_RESOLVER = "sde_gen.group_options"

Task = Callable[[DictConfig, str, Dict[str, str]], Any]

# characters kept in a folder name built from overrides: portable and shell-safe ("=" and "," are
# what Hydra puts between keys, values and overrides)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_DIRNAME = 120  # well under the 255-byte limit of common file systems, leaves room for a prefix


def safe_dirname(text: Any, max_len: int = _MAX_DIRNAME) -> str:
    """A single, harmless path component made from `text` (e.g. Hydra's `override_dirname`).

    Every character outside `[A-Za-z0-9._=,+-]` (path separators, spaces, quotes, brackets, ...)
    becomes "_", every run of two or more dots becomes "_" (so neither "/" nor ".." can appear and
    the name can never climb out of its parent folder), and a leading dot becomes "_" (no hidden
    folders). A name longer than `max_len` keeps its first characters and ends with 8 hex digits of
    the SHA-1 of `text`, so different long override lists stay different.

    Args:
        text: the raw name; converted with `str` (None and "" give "").
        max_len: the longest name returned (>= 16).

    Returns:
        The sanitised name ("" for an empty `text`; callers prefix it, e.g. with the job number).
    """
    if max_len < 16:
        raise ValueError(f"max_len must be >= 16; got {max_len!r}")
    raw = "" if text is None else str(text)
    name = _UNSAFE_CHARS.sub("_", raw)
    name = re.sub(r"\.{2,}", "_", name)
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > max_len:
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
        name = name[: max_len - 9] + "-" + digest
    return name


def group_options(*specs: str, conf_dir: str = CONF_DIR) -> str:
    """The "group: option, option" lines of `--help` for the config groups an app uses.

    Args:
        specs: one per group, in the order shown: "sde" (every YAML file of conf/sde/), "experiment=none|smoke"
            (only those options, for a group shared by apps), "experiment-sampler_grid" (all but those).
        conf_dir: the config folder.

    Returns:
        One line per group, e.g. "sde: edm, subvp, ve, vp, vp_cosine".
    """
    lines = []
    for spec in specs:
        group, sep, names = re.match(r"^([\w/]+)([=-]?)(.*)$", str(spec).strip()).groups()
        folder = os.path.join(conf_dir, group)
        found = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
        picked = set(filter(None, names.split("|")))
        if sep == "=":
            found = [o for o in found if o in picked]
        elif sep == "-":
            found = [o for o in found if o not in picked]
        lines.append(f"{group}: {', '.join(found)}")
    return "\n".join(lines)


def _register_resolver() -> None:
    if not OmegaConf.has_resolver(SAFE_DIRNAME_RESOLVER):
        OmegaConf.register_new_resolver(SAFE_DIRNAME_RESOLVER, safe_dirname)
    if not OmegaConf.has_resolver(GROUP_OPTIONS_RESOLVER):
        OmegaConf.register_new_resolver(GROUP_OPTIONS_RESOLVER, lambda *specs: group_options(*specs))


# registered on import: a launcher worker that unpickles an app's task imports this module too
_register_resolver()


def _prog() -> str:
    """The command as the user typed it: `sde-gen-sample`, or `python -m sde_gen.sample`."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0.endswith(".py") or argv0 in ("", "-c", "__main__.py"):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return f"python -m {spec.name.removesuffix('.__main__')}"
        return argv0 or "sde_gen"
    return argv0


def one_line(err: BaseException) -> str:
    """`err`'s message on one line: its lines joined, Hydra's search-path listing dropped.

    For a missing config-group option the choices are listed (the `*_schema` entries, which are
    the validation schemas rather than choices, are left out).
    """
    text = str(err)
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
        text += "\n" + str(cause)  # Hydra's compact errors keep the OmegaConf detail in the cause
    options = getattr(err, "options", None)
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("Config search path"):
            break  # the rest is Hydra's search path: noise for a user
        if line.strip():
            lines.append(line.strip())
    if options is not None:
        # the listed options (one per line) are replaced by a comma-separated list of real choices
        listed = set(options)
        lines = [l for l in lines if l not in listed]
        lines = [l for l in lines if not l.startswith("Available options")]
        choices = [o for o in options if not o.endswith("_schema")]
        lines.append(f"(choices: {', '.join(choices)})" if choices else "")
    return " ".join(l for l in lines if l)


def one_line_errors(fn: Callable[[], Any], full_error: Optional[bool] = None) -> Any:
    """Run `fn()`; a user error (or a full disk) becomes one stderr line and `SystemExit(2)`, a
    `TrainingInterrupted` one line and `SystemExit(128 + signal number)`.

    Args:
        fn: the work.
        full_error: show tracebacks of user errors instead (None: read `HYDRA_FULL_ERROR` now).
    """
    try:
        return _user_errors_in_one_line(fn, full_error)
    except TrainingInterrupted as err:  # the checkpoint is saved: nothing to debug
        print(f"{_prog()}: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def _user_errors_in_one_line(fn: Callable[[], Any], full_error: Optional[bool]) -> Any:
    if full_error is None:
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error:
        return fn()
    try:
        return fn()
    except USER_ERRORS as err:
        print(f"{_prog()}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"{_prog()}: error: no space left on device ({err.filename or err})", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def _hydra_reraises() -> Iterator[None]:
    """Make Hydra re-raise errors instead of printing its own multi-line report and exiting 1.

    Hydra's only switch for that is the environment variable HYDRA_FULL_ERROR; it is set for the
    duration of the app and restored afterwards.
    """
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


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
    from hydra.errors import HydraException

    register_configs()
    _register_resolver()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    from_task = set()  # ids of exceptions that escaped the task: those are not composition errors

    def entry(cfg: DictConfig) -> Any:
        hc = HydraConfig.get()
        try:
            return one_line_errors(lambda: task(cfg, hc.runtime.output_dir, dict(hc.runtime.choices)), full_error)
        except BaseException as err:
            from_task.add(id(err))
            raise

    # Hydra names the job (its log file, `--help`'s header) after the task function's module:
    # the app's module ("sample"), not this helper ("_hydra")
    module = task.__module__
    if module == "__main__":  # `python -m sde_gen.apps.sample`
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else config_name
    entry.__module__ = module

    app = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)(entry)
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else config_name, *argv]
    try:
        with _hydra_reraises():
            app()
    except (HydraException, OmegaConfBaseException) as err:
        if full_error or id(err) in from_task:
            raise
        print(f"{_prog()}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved
