"""Score networks: time features, backbones (MLP, U-Net, the DDPM++ U-Net, diffusers' UNet2DModel)
and the score parameterisation.

`ScoreModel` turns a backbone into a score; `build_score_model` builds one from a `model:` config.
`BACKBONES` maps a config name to its backbone class; `register_backbone(name, cls)` trusts one of
your own. Noise-conditional classifiers for guidance: `MLPClassifier`, `UNetClassifier` (registry
`CLASSIFIERS`), wrapped by `NoiseConditionalClassifier` and built by `build_classifier`.
"""
from .build import BACKBONES, CLASSIFIERS, build_classifier, build_score_model, model_kind, register_backbone
from .classifier import MLPClassifier, NoiseConditionalClassifier, UNetClassifier
from .ddpmpp import DDPMpp
from .diffusers_unet import DiffusersUNet
from .fourier import GaussianFourierFeatures, TimeEmbedding
from .mlp import MLP
from .score_model import ScoreModel
from .unet import UNet

__all__ = ["GaussianFourierFeatures", "TimeEmbedding", "MLP", "UNet", "DDPMpp", "DiffusersUNet", "ScoreModel", "BACKBONES",
           "register_backbone", "build_score_model", "MLPClassifier", "UNetClassifier", "NoiseConditionalClassifier", "CLASSIFIERS",
           "build_classifier", "model_kind"]
