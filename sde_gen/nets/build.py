"""Build a `ScoreModel` from a `model:` config node and the data's shape."""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Sequence

from ..config import ConfigError, instantiate
from .score_model import ScoreModel

__all__ = ["build_score_model"]


def build_score_model(model_cfg, sde, event_shape: Sequence[int], data_std: float = 1.0) -> ScoreModel:
    """The `ScoreModel` of a `model:` node (`_target_` + options) for data of `event_shape`.

    The backbone's shape arguments come from the data, not the config: `dim` (vectors) or
    `in_channels` and `image_size` (images, event shape (C, H, W)).

    Raises:
        ConfigError naming `model` when the target cannot be imported or does not fit the data.
    """
    from hydra.utils import get_class

    try:
        cls = get_class(model_cfg._target_)
    except Exception as err:
        raise ConfigError(f"model: cannot import _target_ {model_cfg.get('_target_')!r} ({err})") from err
    params = inspect.signature(cls.__init__).parameters
    shape_args: Dict[str, Any] = {}
    if "dim" in params:
        shape_args["dim"] = int(math.prod(event_shape))
    if "in_channels" in params:
        if len(event_shape) != 3:
            raise ConfigError(
                f"model: {cls.__name__} needs image data (C, H, W); the data have event shape {tuple(event_shape)}"
            )
        shape_args["in_channels"], shape_args["image_size"] = event_shape[0], event_shape[-1]
    backbone = instantiate(model_cfg, "model", **shape_args)
    return ScoreModel(backbone, sde, data_std=data_std)
