"""Validated Hydra configuration: dataclass schemas in Hydra's ConfigStore.

Two kinds of schema:

* Groups whose entries build an object through `_target_` (sde/, model/, sampler/, data/, loss/,
  lr_scheduler/, logger/): the schema is generated from the target class's constructor signature by `schema_for`, so the constructor
  is the one source of truth. OmegaConf then rejects a misspelt key and a wrong type when the
  config is composed, and `instantiate` runs the constructor's own range checks at start-up.
  A YAML file extends its schema through its defaults list, e.g. `conf/sde/vp.yaml`:

      defaults:
        - /sde_vp_schema
      beta_min: 0.1

  The schemas are stored at the root of the ConfigStore as `<group>_<name>_schema`, not inside
  their group: a group lists exactly its YAML files in `--help`, and `sde=vp_schema` is no option
  (the apps refuse it in one line naming the group's options, see `sde_gen.apps._hydra`).

* Plain sections (training options here, the apps' in `config_apps.py`) and the `optimizer:` node
  (a torch optimiser, `OptimizerConf`) are dataclasses with a `__post_init__` that checks ranges;
  `validate(cfg, schema)` converts the section with `OmegaConf.to_object`, running it.

Every failure is raised as `ConfigError` naming the config path, before any work is done.

Which components a config may build: `component_registries()` maps each `_target_` section (sde,
model, data, sampler, loss, optimizer, lr_scheduler, logger) to the library's registry, and `registered_targets(section)` gives the
`_target_` strings of its classes. A config stored in a checkpoint is checked against these
strings before anything is imported (`sde_gen.checkpoint.check_checkpoint_config`).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import sys
import typing
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "schema_for",
    "register_target",
    "register_configs",
    "component_registries",
    "target_names",
    "registered_targets",
    "check_target_names",
    "instantiate",
    "validate",
    "resolve_device",
    "TrainConf",
    "OptimizerConf",
]

_PRIMITIVES = (int, float, bool, str)

#: the config folder shipped inside the package (`conf/` at the repository root links to it)
CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


class ConfigError(ValueError):
    """A configuration value is missing, misspelt, of the wrong type or out of range."""


def _omegaconf_type(ann):
    """The annotation if OmegaConf can enforce it, else Any."""
    if ann in _PRIMITIVES:
        return ann
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and non_none[0] in _PRIMITIVES:
            return Optional[non_none[0]]
        return Any
    if origin in (list, typing.List, tuple, typing.Tuple, typing.Sequence) and args and all(
        a in _PRIMITIVES for a in args if a is not Ellipsis
    ):
        return typing.List[args[0]]
    return Any


def schema_for(target: type, exclude: tuple = (), untyped: tuple = ()) -> Type:
    """A dataclass schema with `_target_` and one field per constructor argument of `target`.

    Types OmegaConf cannot enforce (tensors, callables) become Any; arguments without a default
    become required (MISSING). Arguments named in `exclude` are left out (they are given at
    instantiation, e.g. the model's data shape); those in `untyped` become Any (their value is
    checked at start-up, e.g. a model's `num_classes`, which also takes "auto").
    """
    sig = inspect.signature(target.__init__)
    hints = typing.get_type_hints(target.__init__)
    fields = [("_target_", str, dataclasses.field(default=f"{target.__module__}.{target.__qualname__}"))]
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in exclude:
            continue
        ann = Any if p.name in untyped else _omegaconf_type(hints.get(p.name, Any))
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        if isinstance(default, (list, dict)):
            fields.append((p.name, ann, dataclasses.field(default_factory=lambda d=default: d)))
        else:
            fields.append((p.name, ann, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{target.__name__}Conf", fields)


def schema_name(group: str, name: str) -> str:
    """The ConfigStore name of the schema of option `name` of `group`, e.g. "sde_vp_schema"."""
    return f"{group}_{name}_schema"


def register_target(group: str, name: str, target: type, exclude: tuple = (), untyped: tuple = ()) -> None:
    """Store `schema_for(target)` at the root of the ConfigStore as `<group>_<name>_schema`.

    At the root, not in `group`: a schema is what a YAML option extends (`- /<group>_<name>_schema`
    in its defaults list), not an option itself, so it never shows in the group's `--help` choices
    and `group=<name>_schema` is not selectable.
    """
    ConfigStore.instance().store(name=schema_name(group, name), node=schema_for(target, exclude, untyped))


_REGISTERED = False


def register_configs() -> None:
    """Register every schema of the library (idempotent). The Hydra apps call it at start-up."""
    global _REGISTERED
    if _REGISTERED:
        return
    from .samplers import SAMPLERS
    from .sdes import SDES

    for name, cls in SDES.items():
        register_target("sde", name, cls)
    for name, cls in SAMPLERS.items():
        register_target("sampler", name, cls)
    _register_training()
    for hook in _EXTRA_REGISTRATIONS:
        hook()
    _REGISTERED = True


def _register_training() -> None:
    """Schemas of the training app: backbones (shape arguments come from the data), datasets, train,
    and the loss, optimizer, lr_scheduler and logger nodes."""
    from .data import DATASETS
    from .loggers import LOGGERS
    from .losses import LOSSES
    from .nets import BACKBONES, CLASSIFIERS
    from .nets.build import register_model_schema
    from .optim import LR_SCHEDULERS, OPTIMIZERS

    for name, cls in {**BACKBONES, **CLASSIFIERS}.items():
        register_model_schema(name, cls)
    for name, cls in DATASETS.items():
        register_target("data", name, cls)
    # at the root like the other schemas (`- /train_schema` in conf/train/default.yaml)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConf)
    for name, cls in LOSSES.items():
        register_target("loss", name, cls)
    for name, cls in OPTIMIZERS.items():
        store.store(name=schema_name("optimizer", name),
                    node=OptimizerConf(_target_=f"torch.optim.{cls.__name__}", weight_decay=1e-2 if name == "adamw" else 0.0))
    for name, cls in LR_SCHEDULERS.items():
        # `_partial_`: the optimiser is passed when the model is built
        schema = schema_for(cls, exclude=("optimizer",))
        store.store(name=schema_name("lr_scheduler", name),
                    node=dataclasses.make_dataclass(schema.__name__, [("_partial_", bool, True)], bases=(schema,)))
    for name, cls in LOGGERS.items():
        register_target("logger", name, cls, exclude=("run_dir",))
    _register_discrete()


def _register_discrete() -> None:
    """Schemas of discrete diffusion (`sde_gen.discrete`): its processes in the `sde` group (d3pm_<name>),
    its samplers in `sampler`, its networks in `model` (S, K, L and T come from the process and the
    data), its loss in `loss` and its token data sets in `data`."""
    from .discrete.data import TOKEN_DATASETS
    from .discrete.losses import DISCRETE_LOSSES
    from .discrete.nets import DISCRETE_NETS, DISCRETE_SHAPE_ARGS
    from .discrete.samplers import DISCRETE_SAMPLERS

    for name, cls in discrete_processes().items():
        register_target("sde", name, cls)
    for name, cls in DISCRETE_SAMPLERS.items():
        register_target("sampler", name, cls)
    for name, cls in DISCRETE_NETS.items():
        register_target("model", name, cls, exclude=DISCRETE_SHAPE_ARGS)
    for name, cls in DISCRETE_LOSSES.items():
        register_target("loss", name, cls)
    for name, cls in TOKEN_DATASETS.items():
        register_target("data", name, cls)


def discrete_processes() -> Dict[str, type]:
    """Config name (`d3pm_<name>`) -> discrete forward process class, as the `sde:` section may name them."""
    from .discrete.processes import PROCESSES

    return {f"d3pm_{name}": cls for name, cls in PROCESSES.items()}


#: functions run by `register_configs` for schemas defined in other modules (training, apps)
_EXTRA_REGISTRATIONS: list = []


# ---- the components a config may build ----
#: the public packages whose re-exports also name a component (e.g. `sde_gen.VPSDE`, `sde_gen.nets.MLP`)
_PUBLIC_MODULES = ("sde_gen", "sde_gen.sdes", "sde_gen.nets", "sde_gen.data", "sde_gen.samplers", "sde_gen.discrete",
                   "torch.optim")
#: an absolute dotted Python path: no relative (leading dot) or file-system form
_DOTTED_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def component_registries() -> Dict[str, Dict[str, type]]:
    """Config section -> the registry (config name -> class) of the components it may build."""
    from .data import DATASETS
    from .loggers import LOGGERS
    from .losses import LOSSES
    from .nets import BACKBONES, CLASSIFIERS
    from .optim import LR_SCHEDULERS, OPTIMIZERS
    from .samplers import CORRECTORS, SAMPLERS
    from .sdes import SDES

    from .discrete.data import TOKEN_DATASETS
    from .discrete.losses import DISCRETE_LOSSES
    from .discrete.nets import DISCRETE_NETS
    from .discrete.samplers import DISCRETE_SAMPLERS

    # a model: section builds a score backbone, a noise-conditional classifier or (discrete diffusion,
    # whose forward process the sde: section names) an x_0-logit network
    return {"sde": {**SDES, **discrete_processes()}, "model": {**BACKBONES, **CLASSIFIERS, **DISCRETE_NETS},
            "data": {**DATASETS, **TOKEN_DATASETS}, "sampler": {**SAMPLERS, **DISCRETE_SAMPLERS}, "corrector": CORRECTORS,
            "loss": {**LOSSES, **DISCRETE_LOSSES}, "optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS, "logger": LOGGERS}


#: components a section's nested nodes may build (e.g. `pc`'s `predictor` and `corrector`)
NESTED_COMPONENTS = {"sampler": ("sampler", "corrector")}
#: sections whose node is built `_partial_` (the training loop passes the parameters / the optimiser)
PARTIAL_SECTIONS = ("optimizer", "lr_scheduler")


def target_names(cls: type) -> List[str]:
    """Every `_target_` string that names `cls`: `f"{cls.__module__}.{cls.__qualname__}"` (what the
    schemas write) and its public re-exports (e.g. `sde_gen.VPSDE`).

    Computed from the already imported modules of the package, so it imports nothing.
    """
    names = [f"{cls.__module__}.{cls.__qualname__}"]
    for module_name in _PUBLIC_MODULES:
        module = sys.modules.get(module_name)
        for attr, value in (vars(module).items() if module is not None else ()):
            if value is cls and f"{module_name}.{attr}" not in names:
                names.append(f"{module_name}.{attr}")
    return names


def registered_targets(section: str) -> Dict[str, type]:
    """`_target_` string -> class for every registered component of config section `section`
    (a key of `component_registries()`; {} for any other section)."""
    registry = component_registries().get(section, {})
    return {name: cls for cls in registry.values() for name in target_names(cls)}


def check_target_names(field: str, names: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """A user's list of trusted `_target_` strings, checked: absolute dotted paths only.

    Args:
        field: the option's name, for the message (e.g. "trusted_targets").
        names: None or a list of strings such as "mypkg.nets.MyNet".

    Raises:
        ConfigError naming `field` for a bare string, a non-string or a name that is not an
        absolute dotted path (a relative ".mod.Cls" or a file path).
    """
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ConfigError(f"{field} must be a list of dotted class paths such as [mypkg.nets.MyNet]; got {names!r}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not _DOTTED_PATH.fullmatch(name):
            raise ConfigError(
                f"{field} must hold absolute dotted paths such as 'mypkg.nets.MyNet' (no file paths, no leading dot); got {name!r}"
            )
    return out


def instantiate(node: DictConfig, path: str, **kwargs) -> Any:
    """Build the object of a `_target_` config node; constructor errors become `ConfigError`.

    Args:
        node: the config node (e.g. `cfg.sde`).
        path: its path in the config, used in the message (e.g. "sde").
        **kwargs: extra constructor arguments not in the config (e.g. data shapes).
    """
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except Exception as err:  # hydra wraps constructor errors in InstantiationException
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, (ValueError, TypeError)):
            cause = cause.__cause__
        raise ConfigError(f"{path}: {cause}") from err


def validate(section: DictConfig, schema: type, path: str):
    """Check a plain config section against a dataclass schema (types, keys and ranges).

    Returns the dataclass instance; raises `ConfigError` naming the path on any problem.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except Exception as err:
        raise ConfigError(f"{path}: {err}") from err


def resolve_device(name: str) -> torch.device:
    """An app's `device` option: "auto" (CUDA when available, else CPU) or any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'; got {name!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"device={name!r} but this machine has {count} CUDA device(s); allowed: cuda:0 .. cuda:{count - 1}")
    return dev


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain Python containers (safe to store in a checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# ---- the train: section of sde-gen-train ----
@dataclasses.dataclass
class TrainConf:
    """The `train:` section (checked at start-up; see `conf/train/default.yaml`). The loss, the
    optimiser, the learning-rate schedule and the logger are `_target_` nodes of their own groups
    (`loss/`, `optimizer/`, `lr_scheduler/`, `logger/`), checked by their constructors.

    Attributes:
        steps: total optimiser steps (a resumed run continues up to this number).
        batch_size: training batch size.
        grad_clip: maximum global gradient norm (null: no clipping).
        ema_decay: EMA decay per step, in [0, 1).
        checkpoint_every: steps between checkpoints (one is always written at the end, and one when
            SIGINT or SIGTERM stops the run). A checkpoint due while the latest step was skipped
            (non-finite loss or gradient) waits for the next good step.
        keep_checkpoints: how many checkpoint files to keep (the newest with finite weights is
            never deleted).
        max_bad_steps: stop with `TrainingDiverged` after this many consecutive steps whose loss or
            gradient was not finite (each such step is skipped: no optimiser or EMA update).
        eval_every: steps between evaluations (one always runs at the end).
        eval_samples: samples drawn with the EMA model per evaluation (at most; see eval_budget).
        eval_budget: the evaluations' share of the run's network work, so that a short run does not
            spend most of its time evaluating: each evaluation draws
            min(eval_samples, max(1000, eval_budget x 3 x steps x batch_size / (evaluations x nfe)))
            samples (a training example costs about three forwards: forward and backward; a sample
            nfe forwards); the noise floors use the same count. Score models only (a classifier's
            evaluation draws no samples). null: always eval_samples.
        eval_projections: random directions of the sliced Wasserstein distance.
        noise_floor_replicates: replicates of the noise-floor estimate.
        score_error_samples: Monte Carlo samples per time of the score-error diagnostic.
        log_every: steps between loss log rows (and progress-bar updates).
        label_dropout: conditional models only (`model.num_classes` set): the probability with which
            a training label is replaced by the "no label" token (classifier-free guidance, Ho &
            Salimans 2021, p_uncond), so that the same network also learns the unconditional
            score; in [0, 1). Unconditional models and classifiers ignore it. 0.2 (the top of the
            literature's 0.1-0.2): on ring2d 0.1 left the no-label output at 3x the noise floor.
        resume: null (fresh run), "auto" (the latest checkpoint of this run directory if any) or a
            checkpoint file / run directory to continue from. The checkpoint's `sde`, `data`, `model`
            and `seed` must equal the run's (else a ConfigError lists the differing keys); `train.*`
            (e.g. a larger `steps`), `loss`, `optimizer`, `lr_scheduler`, `logger`, `sampler.*`
            (evaluation only) and `device` may differ.
        progress: show a tqdm progress bar.
        plots: save pictures in the run directory.
        precision: "fp32" (default), "bf16" or "fp16": `torch.autocast` of that dtype around the
            forward pass and the loss; the weights, their gradients, the EMA and the optimiser
            state stay float32 (autocast casts copies), the loss is reduced in float32. "fp16"
            adds a `torch.amp.GradScaler` and needs a CUDA device (refused on the CPU at start-up);
            "bf16" runs on the CPU too.
        compile: train through `torch.compile(model)`; when compilation fails on the first step the
            run continues eager (reported once in the log). Checkpoints hold the plain network's
            weights either way.
        compile_backend: the `torch.compile` backend ("inductor", PyTorch's default; "aot_eager"
            and "eager" trace without generating code, for debugging).
        loader: how image batches reach the network: "device" (`ImageDataset.sample_batch`, indices
            with replacement drawn by the training generator from a copy of the data on the
            training device) or "dataloader" (`sde_gen.data.loader.image_loader`: a
            `torch.utils.data.DataLoader` over seeded epoch permutations; image data only).
        num_workers, pin_memory, persistent_workers: the DataLoader's options (loader=dataloader;
            pinned memory only when training on CUDA; persistent workers need num_workers >= 1).
    """

    steps: int = 6000
    batch_size: int = 512
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.995
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    max_bad_steps: int = 20
    eval_every: int = 3000
    eval_samples: int = 10000
    eval_budget: Optional[float] = 0.25
    eval_projections: int = 500
    noise_floor_replicates: int = 10
    score_error_samples: int = 2048
    log_every: int = 100
    label_dropout: float = 0.2
    resume: Optional[str] = None
    progress: bool = True
    plots: bool = True
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    loader: str = "device"
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False

    def __post_init__(self):
        def need(ok: bool, field: str, rule: str):
            if not ok:
                raise ValueError(f"{field} must be {rule}; got {getattr(self, field)!r}")

        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "max_bad_steps", "eval_every",
                     "eval_samples", "eval_projections", "noise_floor_replicates", "score_error_samples", "log_every"):
            need(getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0), "grad_clip", "> 0 or null")
        need(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        need(self.eval_budget is None or (isinstance(self.eval_budget, (int, float)) and not isinstance(self.eval_budget, bool)
                                          and 0 < self.eval_budget <= 1e6 and math.isfinite(self.eval_budget)),
             "eval_budget", "a number > 0 or null (always eval_samples)")
        need(0 <= self.label_dropout < 1, "label_dropout", "in [0, 1) (0: no unconditional training)")
        need(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}")
        need(bool(self.compile_backend), "compile_backend", "a torch.compile backend name such as 'inductor'")
        need(self.loader in LOADERS, "loader", f"one of {list(LOADERS)}")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(not self.persistent_workers or self.num_workers >= 1, "persistent_workers",
             "false when num_workers=0 (there are no workers to keep)")


#: train.precision -> the autocast dtype (None: no autocast)
from .precision import PRECISIONS  # noqa: E402 - one table for training and sampling

#: train.loader: the image input pipelines (see TrainConf)
LOADERS = ("device", "dataloader")


@dataclasses.dataclass
class OptimizerConf:
    """The `optimizer:` node: a `_partial_` torch optimiser (the parameters come when the model is
    built) of `sde_gen.optim.OPTIMIZERS` (Adam, AdamW; Kingma & Ba 2015, Loshchilov & Hutter 2019).

    Attributes:
        lr: the learning rate after warm-up (lr_0 of `sde_gen.optim`), > 0.
        betas: the moment decays, each in [0, 1).
        eps: the denominator's guard, > 0.
        weight_decay: >= 0 (AdamW: decoupled from the gradient).
        amsgrad: use the AMSGrad variant.
    """

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 2e-3
    betas: List[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1); got {list(self.betas)!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be > 0; got {self.eps!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}")


# ---- the apps' sections (sde-gen-eval, sde-gen-sample) live in sde_gen/config_apps.py ----
def _register_app_schemas() -> None:
    from .config_apps import register_app_schemas

    register_app_schemas()


_EXTRA_REGISTRATIONS.append(_register_app_schemas)
