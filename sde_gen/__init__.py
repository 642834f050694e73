"""sde_gen: score-based generative modelling through SDEs, checked against exact scores.

Public API (explicit re-exports; nothing relies on side-effect imports):
    SDEs:      SDE, VPSDE, SubVPSDE, VESDE, EDMSDE, SDES, build_sde
    oracles:   GaussianMixture, PRESETS, make_preset, ExactConditionalScore
    guidance:  classifier_free, classifier_guided, GuidedScore
    inverse problems: LinearMeasurement, Inpainting, Colorization, Replacement, RePaint, DPS,
               TweedieMoment, ExactConditional, CONDITIONS, build_condition
    sampling:  sample, SAMPLERS, SampleResult
    training:  dsm_loss, DenoisingScoreMatching, ScoreModel, MLP, UNet, build_score_model, DATASETS,
               build_dataset, train, load_trained, Trained
    conditional: NoiseConditionalClassifier, NoiseConditionalCrossEntropy, load_classifier
    likelihood: log_likelihood, bits_per_dim, evaluate_dataset, LikelihoodResult, BitsPerDimResult,
               elbo, ELBOResult, estimate_gamma, estimate_residual, GammaTable
    metrics:   frechet_distance, kid, classifier_features
    interop:   EpsModelScore, DDPMTimesteps, load_diffusers_pipeline, KDiffusionDenoiser, DenoiserScore,
               export_trained (diffusers / k-diffusion / safetensors are optional, imported on use)
    helpers:   append_dims, batch_sum
The Hydra apps live in `sde_gen.apps` (nothing in the library imports them).
"""
from .analytic import GammaTable, estimate_gamma, estimate_residual
from .checkpoint import Trained, export_trained, load_classifier, load_trained
from .data import DATASETS, build_dataset
from .guidance import GuidedScore, classifier_free, classifier_guided
from .interop import DDPMTimesteps, DenoiserScore, EpsModelScore, KDiffusionDenoiser, load_diffusers_pipeline
from .inverse import (
    CONDITIONS,
    DPS,
    Colorization,
    ExactConditional,
    Inpainting,
    LinearMeasurement,
    RePaint,
    Replacement,
    TweedieMoment,
    build_condition,
)
from .likelihood import BitsPerDimResult, ELBOResult, LikelihoodResult, bits_per_dim, elbo, evaluate_dataset, log_likelihood
from .losses import DenoisingScoreMatching, NoiseConditionalCrossEntropy, dsm_loss
from .metrics import classifier_features, frechet_distance, kid
from .nets import MLP, NoiseConditionalClassifier, ScoreModel, UNet, build_score_model
from .oracles import PRESETS, ExactConditionalScore, GaussianMixture, make_preset
from .samplers import SAMPLERS, SampleResult, sample
from .sdes import SDE, SDES, EDMSDE, SubVPSDE, VESDE, VPSDE, build_sde
from .training import train
from .utils import append_dims, batch_sum

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "SDES",
    "build_sde",
    "GaussianMixture",
    "PRESETS",
    "make_preset",
    "ExactConditionalScore",
    "classifier_free",
    "classifier_guided",
    "GuidedScore",
    "LinearMeasurement",
    "Inpainting",
    "Colorization",
    "Replacement",
    "RePaint",
    "DPS",
    "TweedieMoment",
    "ExactConditional",
    "CONDITIONS",
    "build_condition",
    "sample",
    "SAMPLERS",
    "SampleResult",
    "train",
    "build_score_model",
    "dsm_loss",
    "DenoisingScoreMatching",
    "ScoreModel",
    "MLP",
    "UNet",
    "DATASETS",
    "build_dataset",
    "load_trained",
    "export_trained",
    "EpsModelScore",
    "DDPMTimesteps",
    "load_diffusers_pipeline",
    "KDiffusionDenoiser",
    "DenoiserScore",
    "Trained",
    "NoiseConditionalClassifier",
    "NoiseConditionalCrossEntropy",
    "load_classifier",
    "log_likelihood",
    "bits_per_dim",
    "evaluate_dataset",
    "LikelihoodResult",
    "BitsPerDimResult",
    "elbo",
    "ELBOResult",
    "estimate_gamma",
    "estimate_residual",
    "GammaTable",
    "frechet_distance",
    "kid",
    "classifier_features",
    "append_dims",
    "batch_sum",
]
