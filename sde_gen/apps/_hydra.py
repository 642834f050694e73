"""One way for every Hydra app to start: `hydra_app(config_name, task, argv)`.

It registers the schemas, points Hydra at the configs shipped inside the package (so the apps run
from any working directory), checks every `group=option` of the command line against the group's
real options (`check_group_choices`), and turns the package's own errors into one line on stderr
with exit code 2 (`HYDRA_FULL_ERROR=1` shows the traceback instead).
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from ..checkpoint import CheckpointError
from ..config import CONF_DIR, ConfigError, register_configs

__all__ = ["USER_ERRORS", "check_group_choices", "hydra_app", "one_line_errors"]

#: errors that describe bad input rather than a bug: reported in one line
USER_ERRORS = (ConfigError, CheckpointError, ValueError)

Task = Callable[[DictConfig, str, Dict[str, str]], Any]


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "sde_gen"


def one_line_errors(fn: Callable[[], Any]) -> Any:
    """Run `fn()`; a user error (or a full disk) becomes one stderr line and `SystemExit(2)`."""
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


def _unknown_choices(config_name: str, argv: Sequence[str]) -> List[str]:
    """`group=option` overrides of `argv` whose option is not in its app config group, as messages.

    Options are listed by Hydra's own config loader on the search path the app will use (the
    package configs, `--config-dir`, `hydra.searchpath`), so an option of your own is accepted.
    Returns [] for anything it cannot read (a malformed command line is Hydra's to report).
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # argparse's own error; Hydra repeats and reports it
        return []
    if args.config_path is not None or args.shell_completion:
        return []
    name = args.config_name or config_name
    problems = []
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        search_path = create_config_search_path(f"file://{CONF_DIR}")
        if args.config_dir is not None:  # as hydra.main adds it
            search_path.prepend("command-line", f"file://{os.path.abspath(args.config_dir)}", SearchPathQuery(provider="schema"))
        loader = ConfigLoaderImpl(config_search_path=search_path)
        listed: Dict[Any, List[str]] = {}

        def listing(group: str, kind) -> List[str]:
            if (group, kind) not in listed:  # each listing loads the primary config once
                listed[group, kind] = loader.get_group_options(group, kind, config_name=name, overrides=list(args.overrides))
            return listed[group, kind]

        for override in parsed:
            group = override.key_or_group
            if override.is_delete() or override.is_hydra_override() or "." in group:
                continue  # a value override (sde.beta_min=...) or Hydra's own groups
            parent, _, leaf = group.rpartition("/")
            if leaf not in listing(parent, ObjectType.GROUP):
                continue
            if override.value_type == ValueType.ELEMENT:
                values = [override.value()]
            elif override.value_type in (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP):
                values = list(override.sweep_string_iterator())
            else:  # glob() expands over the real options; range() and interval() are not options
                continue
            options = listing(group, ObjectType.CONFIG)
            bad = [v for v in values if isinstance(v, str) and v not in options]
            if bad:
                problems.append(
                    f"{override.input_line}: no option {', '.join(map(repr, bad))} in config group '{group}'; "
                    f"choose one of: {', '.join(options)}"
                )
    except Exception:  # noqa: BLE001 - an override Hydra cannot parse is reported by Hydra itself
        return []
    return problems


def check_group_choices(config_name: str, argv: Sequence[str]) -> None:
    """Refuse, before Hydra starts, a `group=option` naming no option of that group.

    Hydra would refuse it too, in a multi-line report; this gives the apps' one-line form. It also
    answers `sampler=heun_schema`: schemas live at the root of the ConfigStore, not in their group
    (`sde_gen.config.register_target`), so they are neither listed in `--help` nor selectable.

    Raises:
        ConfigError naming the override, the group and its options.
    """
    problems = _unknown_choices(config_name, argv)
    if problems:
        raise ConfigError("; ".join(problems))


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
    one_line_errors(lambda: check_group_choices(config_name, sys.argv[1:] if argv is None else argv))

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
