"""Score networks: time features, backbones (MLP, U-Net) and the score parameterisation.

`MODELS` maps a config name to its backbone class; `ScoreModel` turns a backbone into a score.
"""
from .fourier import GaussianFourierFeatures, TimeEmbedding
from .mlp import MLP
from .score_model import ScoreModel
from .unet import UNet

#: config name -> backbone class
MODELS = {"mlp": MLP, "unet": UNet}

__all__ = ["GaussianFourierFeatures", "TimeEmbedding", "MLP", "UNet", "ScoreModel", "MODELS"]
