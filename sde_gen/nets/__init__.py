"""Score networks: time features, backbones (MLP, U-Net) and the score parameterisation.

`ScoreModel` turns a backbone into a score; `build_score_model` builds one from a `model:` config.
`BACKBONES` maps a config name to its backbone class; `register_backbone(name, cls)` trusts one of
your own.
"""
from .build import BACKBONES, build_score_model, register_backbone
from .fourier import GaussianFourierFeatures, TimeEmbedding
from .mlp import MLP
from .score_model import ScoreModel
from .unet import UNet

__all__ = ["GaussianFourierFeatures", "TimeEmbedding", "MLP", "UNet", "ScoreModel", "BACKBONES", "register_backbone",
           "build_score_model"]
