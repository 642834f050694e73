"""Score networks: time features, backbones (MLP, U-Net) and the score parameterisation.

`ScoreModel` turns a backbone into a score; `build_score_model` builds one from a `model:` config.
"""
from .build import build_score_model
from .fourier import GaussianFourierFeatures, TimeEmbedding
from .mlp import MLP
from .score_model import ScoreModel
from .unet import UNet

__all__ = ["GaussianFourierFeatures", "TimeEmbedding", "MLP", "UNet", "ScoreModel", "build_score_model"]
