"""Which stored configs may be built: checkpoints are data, not code.

Checkpoints are data, not code. Run directories are shared, so a stored config is untrusted input:
`load_checkpoint` runs `check_checkpoint_config` on it before anything reads it, and that check
compares strings only (nothing is imported): a `_target_` may appear only on the component
sections `sde`, `model`, `data`, `sampler`, `loss`, `optimizer`, `lr_scheduler`, `logger` and must
name a class of the library's registries (`sde_gen.config.component_registries`) or one the
*caller* trusts (`trusted_targets`, or `sde_gen.nets.register_backbone`); `_partial_: true` is
allowed on `optimizer` and `lr_scheduler` only (`sde_gen.config.PARTIAL_SECTIONS`: the training
loop passes the parameters / the optimiser); every other Hydra keyword (`_args_`, `_partial_`
elsewhere, `_recursive_`, `_convert_`, ...), a `_target_` anywhere else, an interpolation `${...}` and any
value that is not a plain str / int / float / bool / None / list / dict is refused. Trust is never
read from the checkpoint.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence

from .config import (
    NESTED_COMPONENTS,
    PARTIAL_SECTIONS,
    check_target_names,
    component_registries,
    registered_targets,
)

__all__ = ["CheckpointError", "check_checkpoint_config", "COMPONENT_SECTIONS"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a sde_gen checkpoint."""


#: the sections of a stored config that build an object from a `_target_`
COMPONENT_SECTIONS = ("sde", "model", "data", "sampler", "loss", "optimizer", "lr_scheduler", "logger")
#: Hydra's instantiation keywords look like `_name_`: `_args_`, `_partial_`, `_recursive_`, `_convert_`
_HYDRA_KEYWORD = re.compile(r"_[A-Za-z0-9_]*_")
_PLAIN = (str, int, float, bool, type(None))
#: deeper than any config of ours; refusing early keeps the walk from exhausting the stack
_MAX_DEPTH = 32


def check_checkpoint_config(config: Any, trusted_targets: Sequence[str] = ()) -> None:
    """Refuse a stored config that would make Hydra do anything but call an allowed constructor
    with plain values. Strings are compared; nothing is imported or instantiated.

    Allowed: a mapping of str keys whose values are str / int / float / bool / None, lists and
    mappings of those, and `_target_` keys on the component sections `config.sde`, `config.model`,
    `config.data`, `config.sampler`, `config.loss`, `config.optimizer`, `config.lr_scheduler`,
    `config.logger` naming a class of that section's registry
    (`sde_gen.config.registered_targets`, e.g. "sde_gen.sdes.VPSDE" or "sde_gen.VPSDE") or a
    string in `trusted_targets`. Refused, with the key's path:

    * any other `_target_` (e.g. "builtins.open", "os.system", "payload.run" resolved through the
      working directory), and a `_target_` anywhere but on a component section (nested nodes and
      `_args_` entries would be built recursively);
    * every other Hydra keyword (`_args_`, `_recursive_`, `_convert_`, ...) and `_partial_` except
      `_partial_: true` directly on `config.optimizer` / `config.lr_scheduler`: they call with
      positional values, return partial functions or change the conversion;
    * a string holding `${`: the config was stored resolved, so an interpolation can only have
      been written in; resolved on access it could read the environment (`oc.env`) or run any
      resolver registered in the process;
    * any other value type (tensors, ...), non-string keys, and nesting deeper than 32.

    Args:
        config: `state["config"]` of a checkpoint (plain containers).
        trusted_targets: `_target_` strings of your own (absolute dotted paths) to accept in the
            component sections; the caller's choice, never read from the checkpoint.

    Raises:
        CheckpointError naming the key path (e.g. `config.sde._target_`) and the offending value.
        ConfigError naming `trusted_targets` when it is not a list of dotted paths.
    """
    trusted = frozenset(check_target_names("trusted_targets", trusted_targets))
    if not isinstance(config, dict):
        raise CheckpointError(f"config: the stored config must be a mapping; got {type(config).__name__}")
    _check_node(config, "config", trusted)


def _refuse_target(target: Any, key_path: str, section: Optional[str], nested: bool = False) -> CheckpointError:
    if section is None:
        return CheckpointError(
            f"{key_path}: target {target!r} refused: a stored config may name a _target_ only on its "
            f"component sections {', '.join(f'config.{s}' for s in COMPONENT_SECTIONS)}"
            f" (and their nested {', '.join(f'config.{k}' for k in NESTED_COMPONENTS)} components)"
        )
    registries = component_registries()
    kinds = NESTED_COMPONENTS[section] if nested else (section,)
    canonical = sorted(f"{cls.__module__}.{cls.__qualname__}" for kind in kinds for cls in registries[kind].values())
    where = f"a component nested in {section}" if nested else section
    return CheckpointError(
        f"{key_path}: target {target!r} is not allowed in a checkpoint; {where} may name {canonical}"
        " or a target you pass in trusted_targets"
    )


def _nested_targets(top: Optional[str]) -> Dict[str, type]:
    """`_target_` -> class for the nodes nested in component section `top` (`NESTED_COMPONENTS`)."""
    allowed: Dict[str, type] = {}
    for registry in NESTED_COMPONENTS.get(top, ()):
        allowed.update(registered_targets(registry))
    return allowed


def _check_node(node: Any, path: str, trusted: frozenset, depth: int = 0, key: Optional[str] = None,
                top: Optional[str] = None) -> None:
    """Walk one stored node (see `check_checkpoint_config`); `key` is its own key, `depth` 1 marks
    the top-level sections, and `top` is the component section the node lies in (None: none)."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{path}: nested deeper than {_MAX_DEPTH} levels")
    if depth == 1:
        top = key if key in COMPONENT_SECTIONS else None
    if isinstance(node, dict):
        if "_target_" in node:
            target, key_path = node["_target_"], f"{path}._target_"
            if depth == 1:
                section, allowed = top, registered_targets(top) if top is not None else {}
            else:  # a nested component (pc's predictor and corrector) of the section's own kinds
                allowed = _nested_targets(top)
                section = top if allowed else None
            if not isinstance(target, str) or not (target in allowed or (section is not None and target in trusted)):
                raise _refuse_target(target, key_path, section, nested=depth > 1)
        for child, value in node.items():
            if not isinstance(child, str):
                raise CheckpointError(f"{path}: key {child!r} is not a string")
            key_path = f"{path}.{child}"
            if "${" in child:
                raise CheckpointError(f"{key_path}: interpolation in a key refused in a stored config")
            if child == "_target_":
                continue
            if child == "_partial_" and depth == 1 and top in PARTIAL_SECTIONS and value is True:
                continue  # the optimiser / scheduler factory; the training loop passes its one argument
            if _HYDRA_KEYWORD.fullmatch(child):
                raise CheckpointError(
                    f"{key_path}: Hydra keyword {child!r} refused in a stored config (a component is built by "
                    "calling its constructor with plain keyword values)"
                )
            _check_node(value, key_path, trusted, depth + 1, child, top)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_node(value, f"{path}[{i}]", trusted, depth + 1, None, top)
    elif isinstance(node, str):
        if "${" in node:
            raise CheckpointError(
                f"{path}: interpolation {node!r} refused in a stored config (configs are stored resolved; "
                "resolvers would run on load)"
            )
    elif not isinstance(node, _PLAIN):
        raise CheckpointError(f"{path}: a {type(node).__name__} is not a plain config value")
