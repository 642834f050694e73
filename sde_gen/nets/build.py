"""Build a `ScoreModel` (or a `NoiseConditionalClassifier`) from a `model:` config node and the data's shape.

`BACKBONES` is the one name -> class registry of score backbones, `CLASSIFIERS` that of the
noise-conditional classifiers (`model=classifier_mlp`, `model=classifier_unet`). A `model:` node names its backbone by
the `_target_` string of a registered class, which is looked up here, never imported: a config
stored in a downloaded checkpoint cannot make this module import code. A backbone of your own is
trusted explicitly, either for the whole process (`register_backbone`) or for one call
(`trusted_targets`).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any, Dict, Iterable, Sequence

from torch import nn

from ..config import ConfigError, check_target_names, instantiate, schema_for, schema_name, target_names
from .classifier import MLPClassifier, NoiseConditionalClassifier, UNetClassifier
from .ddpmpp import DDPMpp
from .diffusers_unet import DiffusersUNet
from .mlp import MLP
from .score_model import PARAMETERIZATIONS, ScoreModel
from .unet import UNet

__all__ = ["BACKBONES", "CLASSIFIERS", "SHAPE_ARGS", "LABEL_ARG", "register_backbone", "build_score_model",
           "build_classifier", "model_kind"]

#: config name -> backbone class (the `model/` options of the configs)
BACKBONES: Dict[str, type] = {"mlp": MLP, "unet": UNet, "ddpmpp": DDPMpp, "diffusers_unet": DiffusersUNet}
#: config name -> noise-conditional classifier class (`model=classifier_mlp`, `model=classifier_unet`)
CLASSIFIERS: Dict[str, type] = {"classifier_mlp": MLPClassifier, "classifier_unet": UNetClassifier}

#: constructor arguments filled in from the data's shape, never from the config
SHAPE_ARGS = ("dim", "in_channels", "image_size")
#: the class-count argument; its schema field also takes "auto" (the data's count, filled in by training)
LABEL_ARG = "num_classes"
#: the key of a `model:` node that picks `ScoreModel`'s output parameterisation, not a backbone option
PARAMETERIZATION_KEY = "parameterization"


def register_model_schema(name: str, cls: type) -> None:
    """Store `/model_<name>_schema`: the constructor's options without the shape arguments,
    `num_classes` untyped so that it may also be "auto", and `parameterization` ("score" or "edm",
    `ScoreModel`'s; taken off before the backbone is built)."""
    from hydra.core.config_store import ConfigStore

    base = schema_for(cls, exclude=SHAPE_ARGS, untyped=(LABEL_ARG,))
    schema = dataclasses.make_dataclass(base.__name__, [(PARAMETERIZATION_KEY, str, "score")], bases=(base,))
    ConfigStore.instance().store(name=schema_name("model", name), node=schema)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def register_backbone(name: str, cls: type) -> None:
    """Trust a backbone class of your own for this process, like the built-in ones.

    Afterwards `build_score_model`, `load_trained` and the apps accept configs and checkpoints whose
    `model._target_` names `cls` (`f"{cls.__module__}.{cls.__qualname__}"`), and a YAML file of
    your own can extend its schema `/model_<name>_schema` (compose-time type checking).

    Args:
        name: the config name (an identifier, e.g. "my_net"); a name already registered for
            another class is refused.
        cls: an `nn.Module` subclass whose constructor takes the data shape as `dim` (vectors) or
            `in_channels` and `image_size` (images) and everything else as keyword options, and
            whose `forward(x, t, y=None)` returns a tensor like x (the -noise prediction, see
            `ScoreModel`).

    Raises:
        ValueError naming the argument when `name` or `cls` is not acceptable.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"backbone name must be an identifier such as 'my_net'; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"backbone class must be a torch.nn.Module subclass; got {cls!r}")
    if BACKBONES.get(name, cls) is not cls:
        raise ValueError(f"backbone name {name!r} is already registered for {BACKBONES[name].__qualname__}; choose another")
    BACKBONES[name] = cls
    register_model_schema(name, cls)


def _targets(registry: Dict[str, type]) -> Dict[str, type]:
    return {name: cls for cls in registry.values() for name in target_names(cls)}


def model_kind(model_cfg) -> str:
    """"classifier" when a `model:` node names a class of `CLASSIFIERS`, "discrete" for an x_0-logit
    network of discrete diffusion (`sde_gen.discrete.nets.DISCRETE_NETS`), else "score"."""
    from ..discrete.nets import DISCRETE_NETS

    target = model_cfg.get("_target_")
    if target in _targets(CLASSIFIERS):
        return "classifier"
    return "discrete" if target in _targets(DISCRETE_NETS) else "score"


def _backbone_class(target: Any, trusted: Iterable[str], kind: str = "score") -> type:
    """The class a `model._target_` string names: registered (looked up) or trusted (imported)."""
    known = _targets(BACKBONES if kind == "score" else CLASSIFIERS)
    if isinstance(target, str) and target in known:
        return known[target]
    other = _targets(CLASSIFIERS if kind == "score" else BACKBONES)
    if isinstance(target, str) and target in other:
        what, use = (("a noise-conditional classifier, not a score backbone", "build_classifier / load_classifier")
                     if kind == "score" else ("a score backbone, not a noise-conditional classifier",
                                              "build_score_model / load_trained"))
        raise ConfigError(f"model._target_: {target!r} is {what}; build it with {use}")
    if kind == "classifier":
        raise ConfigError(f"model._target_: {target!r} is not a registered classifier (registered: {sorted(known)})")
    if isinstance(target, str) and target in trusted:
        from hydra.utils import get_class

        try:
            return get_class(target)
        except Exception as err:
            raise ConfigError(f"model._target_: cannot import trusted target {target!r} ({err})") from err
    raise ConfigError(
        f"model._target_: {target!r} is not a registered backbone (registered: {sorted(known)}); "
        "register your own with sde_gen.nets.register_backbone(name, cls) or list it in trusted_targets"
    )


def _build_backbone(model_cfg, cls: type, event_shape: Sequence[int], num_classes) -> nn.Module:
    """Instantiate `cls` from `model_cfg` with the shape arguments of the data (and the data's
    class count for `num_classes: auto`)."""
    params = inspect.signature(cls.__init__).parameters
    extra: Dict[str, Any] = {}
    if "dim" in params:
        extra["dim"] = int(math.prod(event_shape))
    if "in_channels" in params:
        if len(event_shape) != 3:
            raise ConfigError(
                f"model: {cls.__name__} needs image data (C, H, W); the data have event shape {tuple(event_shape)}"
            )
        extra["in_channels"], extra["image_size"] = event_shape[0], event_shape[-1]
    if PARAMETERIZATION_KEY in model_cfg:
        model_cfg = {k: v for k, v in model_cfg.items() if k != PARAMETERIZATION_KEY}
    if model_cfg.get(LABEL_ARG) == "auto":
        if num_classes is None:
            raise ConfigError(f"model.{LABEL_ARG}=auto takes the data's class count, which was not given "
                              f"(pass {LABEL_ARG}=, or set an integer)")
        extra[LABEL_ARG] = num_classes
    return instantiate(model_cfg, "model", **extra)


def build_classifier(
    model_cfg, sde, event_shape: Sequence[int], data_std: float = 1.0, num_classes=None
) -> NoiseConditionalClassifier:
    """The `NoiseConditionalClassifier` of a `model:` node naming a class of `CLASSIFIERS`.

    Args:
        model_cfg: the `model:` node (e.g. `conf/model/classifier_mlp.yaml`).
        sde: the forward SDE (input scaling c_in(t)).
        event_shape: the shape of one data point; fills `dim` or `in_channels`, `image_size`.
        data_std: sigma_data of the input scaling.
        num_classes: the data's class count, used when the node says `num_classes: auto`.

    Raises:
        ConfigError naming `model` for a target that is not a registered classifier (a score
        backbone is named as such) or options the constructor refuses.
    """
    cls = _backbone_class(model_cfg.get("_target_"), (), kind="classifier")
    return NoiseConditionalClassifier(_build_backbone(model_cfg, cls, event_shape, num_classes), sde, data_std=data_std)


def build_score_model(
    model_cfg, sde, event_shape: Sequence[int], data_std: float = 1.0, trusted_targets: Sequence[str] = (),
    num_classes=None,
) -> ScoreModel:
    """The `ScoreModel` of a `model:` node (`_target_` + options) for data of `event_shape`.

    The backbone's shape arguments come from the data, not the config: `dim` (vectors) or
    `in_channels` and `image_size` (images, event shape (C, H, W)).

    Args:
        model_cfg: the `model:` node; its `_target_` names a class of `BACKBONES`
            (e.g. "sde_gen.nets.mlp.MLP"), or one listed in `trusted_targets`.
        sde: the forward SDE (gives the score parameterisation its std(t)).
        event_shape: the shape of one data point, e.g. (2,) or (1, 8, 8).
        data_std: the data's standard deviation (sigma_data of the parameterisation).
        trusted_targets: further `_target_` strings of your own to import and build.
        num_classes: the data's class count, used when the node says `num_classes: auto`
            (a conditional model, see `sde_gen.nets.TimeEmbedding`).

    Raises:
        ConfigError naming `model` when the target is neither registered nor trusted, is a
        classifier, cannot be imported or does not fit the data.
    """
    trusted = check_target_names("trusted_targets", trusted_targets)
    cls = _backbone_class(model_cfg.get("_target_"), trusted)
    parameterization = model_cfg.get(PARAMETERIZATION_KEY, "score")
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"model.{PARAMETERIZATION_KEY} must be one of {list(PARAMETERIZATIONS)}; got {parameterization!r}")
    return ScoreModel(_build_backbone(model_cfg, cls, event_shape, num_classes), sde, data_std=data_std,
                      parameterization=parameterization)
