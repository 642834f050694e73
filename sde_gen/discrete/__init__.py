"""Discrete-state diffusion: D3PM forward processes, the variational bound, samplers (ancestral D3PM,
MaskGIT) and an exact categorical oracle (Austin et al. 2021; Chang et al. 2022).

Use as `import sde_gen.discrete as dd`:
    processes: DiscreteProcess, UniformProcess, AbsorbingProcess, DiscretizedGaussianProcess,
               PROCESSES, build_process, SCHEDULES, beta_schedule, posterior_probs
    loss/ELBO: hybrid_loss, vb_term, prior_kl, nelbo, ELBOResult
    samplers:  D3PMAncestral, MaskGIT, DISCRETE_SAMPLERS, build_discrete_sampler, sample_discrete
    oracle:    CategoricalMixture, CATEGORICAL_PRESETS, make_categorical_preset, HIDDEN_PRESET
    metrics:   total_variation, marginal_tv, pairwise_tv, mode_weight_tv, exact_noise_floor
    data:      TokenDataset, DigitsTokens, MNISTTokens, MarkovTokens, TOKEN_DATASETS
    apps:      TokenTransformer, HybridLoss (`loss=d3pm_hybrid`), load_discrete (a training checkpoint);
               `sde-gen-train experiment=d3pm_digits_uniform | d3pm_digits_absorbing | maskgit_digits | d3pm_markov`
"""
from .data import TOKEN_DATASETS, DigitsTokens, MarkovTokens, MNISTTokens, TokenDataset
from .losses import ELBOResult, HybridLoss, hybrid_loss, nelbo, prior_kl, vb_term
from .metrics import exact_noise_floor, marginal_tv, mode_weight_tv, pairwise_tv, total_variation
from .oracle import CATEGORICAL_PRESETS, HIDDEN_PRESET, CategoricalMixture, make_categorical_preset
from .processes import (
    PROCESSES,
    SCHEDULES,
    AbsorbingProcess,
    DiscreteProcess,
    DiscretizedGaussianProcess,
    UniformProcess,
    beta_schedule,
    build_process,
    check_tokens,
    posterior_probs,
    sample_categorical,
)
from .nets import TokenTransformer
from .samplers import DISCRETE_SAMPLERS, D3PMAncestral, DiscreteSampler, MaskGIT, build_discrete_sampler, sample_discrete

__all__ = [
    "DiscreteProcess",
    "UniformProcess",
    "AbsorbingProcess",
    "DiscretizedGaussianProcess",
    "PROCESSES",
    "build_process",
    "SCHEDULES",
    "beta_schedule",
    "posterior_probs",
    "check_tokens",
    "sample_categorical",
    "hybrid_loss",
    "vb_term",
    "prior_kl",
    "nelbo",
    "ELBOResult",
    "DiscreteSampler",
    "D3PMAncestral",
    "MaskGIT",
    "DISCRETE_SAMPLERS",
    "build_discrete_sampler",
    "sample_discrete",
    "CategoricalMixture",
    "CATEGORICAL_PRESETS",
    "make_categorical_preset",
    "HIDDEN_PRESET",
    "total_variation",
    "marginal_tv",
    "pairwise_tv",
    "mode_weight_tv",
    "exact_noise_floor",
    "TokenDataset",
    "DigitsTokens",
    "MNISTTokens",
    "MarkovTokens",
    "TOKEN_DATASETS",
    "TokenTransformer",
    "HybridLoss",
    "load_discrete",
]


def __getattr__(name):
    # the checkpoint loader lives with the other loaders (sde_gen.checkpoint), which import this package
    if name == "load_discrete":
        from ..checkpoint import load_discrete

        return load_discrete
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
