"""sde_gen: score-based generative modelling through SDEs, checked against exact scores.

Public API (explicit re-exports; nothing relies on side-effect imports):
    SDEs:      SDE, VPSDE, SubVPSDE, VESDE, SDES, build_sde
    oracles:   GaussianMixture, PRESETS, make_preset
    training:  dsm_loss, DenoisingScoreMatching, ScoreModel, MLP, UNet, DATASETS, build_dataset,
               load_trained (sde_gen.train holds the loop and the Hydra app)
    likelihood: log_likelihood, bits_per_dim, evaluate_dataset, LikelihoodResult, BitsPerDimResult
               (sde_gen.evaluate holds the sde-gen-eval app)
    helpers:   append_dims, batch_sum
"""
from .checkpoint import Trained, load_trained
from .data import DATASETS, build_dataset
from .likelihood import BitsPerDimResult, LikelihoodResult, bits_per_dim, evaluate_dataset, log_likelihood
from .losses import DenoisingScoreMatching, dsm_loss
from .nets import MLP, ScoreModel, UNet
from .oracles import PRESETS, GaussianMixture, make_preset
from .sdes import SDE, SDES, SubVPSDE, VESDE, VPSDE, build_sde
from .utils import append_dims, batch_sum

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "SDES",
    "build_sde",
    "GaussianMixture",
    "PRESETS",
    "make_preset",
    "dsm_loss",
    "DenoisingScoreMatching",
    "ScoreModel",
    "MLP",
    "UNet",
    "DATASETS",
    "build_dataset",
    "load_trained",
    "Trained",
    "log_likelihood",
    "bits_per_dim",
    "evaluate_dataset",
    "LikelihoodResult",
    "BitsPerDimResult",
    "append_dims",
    "batch_sum",
]
