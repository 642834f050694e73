"""Exact log-likelihood through the probability-flow ODE, and bits/dim for discrete images.

change_of_variables.py: log p_{t_min}(x) = log p_T(z) + int div f~ dt (Song et al. 2021, eq. 13, 39;
Chen et al. 2018); divergence.py: the exact trace or the Skilling-Hutchinson estimator (Grathwohl et
al. 2019, eq. 7); dequantisation.py: bits/dim by uniform dequantisation (Theis et al. 2016; Ho et al.
2019) and whole data sets; chain_elbo.py: the discrete reverse chain's ELBO (Ho et al. 2020, eq. 5) with the
fixed and the analytic (Bao et al. 2022) reverse variances. Measurements: docs/likelihood.md and benchmarks/results/likelihood.md.
"""
from ..ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, TIME_VARIABLES
from .change_of_variables import LikelihoodResult, log_likelihood
from .dequantisation import BitsPerDimResult, DatasetLikelihood, bits_per_dim, evaluate_dataset, nats_to_bits_per_dim
from .chain_elbo import ELBO_VARIANCES, ELBOResult, discretised_gaussian_log_prob, elbo
from .divergence import (
    DIVERGENCES,
    PROBES,
    draw_probes,
    drift_and_divergence,
    score_and_divergence,
)

__all__ = [
    "LikelihoodResult",
    "BitsPerDimResult",
    "DatasetLikelihood",
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "DIVERGENCES",
    "PROBES",
    "log_likelihood",
    "drift_and_divergence",
    "score_and_divergence",
    "TIME_VARIABLES",
    "draw_probes",
    "bits_per_dim",
    "nats_to_bits_per_dim",
    "evaluate_dataset",
    "ELBO_VARIANCES",
    "ELBOResult",
    "elbo",
    "discretised_gaussian_log_prob",
]
