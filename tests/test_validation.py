"""Every constructor rejects impossible parameters with a ValueError naming the parameter."""
import math

import pytest
import torch

from sde_gen import VESDE, VPSDE, GaussianMixture, SubVPSDE, build_sde, make_preset

BAD = [
    (lambda: VPSDE(beta_min=0.0), "beta_min"),
    (lambda: VPSDE(beta_min=-1.0), "beta_min"),
    (lambda: VPSDE(beta_max=math.inf), "beta_max"),
    (lambda: VPSDE(beta_max=math.nan), "beta_max"),
    (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
    (lambda: VPSDE(schedule="quadratic"), "schedule"),
    (lambda: VPSDE(eps=0.0), "eps"),
    (lambda: VPSDE(eps=1.0), "eps"),
    (lambda: VPSDE(T=-1.0), "T"),
    (lambda: SubVPSDE(beta_min=-0.1), "beta_min"),
    (lambda: SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_max"),
    (lambda: SubVPSDE(eps=2.0), "eps"),
    (lambda: VESDE(sigma_min=0.0), "sigma_min"),
    (lambda: VESDE(sigma_max=-3.0), "sigma_max"),
    (lambda: VESDE(sigma_min=5.0, sigma_max=5.0), "sigma_min"),
    (lambda: VESDE(sigma_min=float("inf")), "sigma_min"),
    (lambda: VESDE(eps=-1e-5), "eps"),
    (lambda: build_sde("vpp"), "sde"),
    (lambda: GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
    (lambda: GaussianMixture([1.5, -0.5], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[1.0], [-1.0]]), "covariances"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0, 1.0]], [[1.0, 1.0]]), "means"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]]), "covariances"),
    (lambda: GaussianMixture([1.0], [[math.nan, 0.0]], [[1.0, 1.0]]), "means"),
    (lambda: make_preset("ring3d"), "preset"),
    (lambda: make_preset("ring2d").sample(0), "n"),
    (lambda: VESDE().noise_levels(0), "num_levels"),
]


@pytest.mark.parametrize("make, field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_parameters_raise_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_messages_state_the_allowed_range():
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\)"):
        VPSDE(eps=1.5)
    with pytest.raises(ValueError, match=r"one of \['linear', 'cosine'\]"):
        VPSDE(schedule="sigmoid")


def test_shape_mismatch_in_oracle_calls():
    gm = make_preset("ring2d")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        gm.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="t must have shape"):
        gm.score(torch.zeros(3, 2), torch.zeros(4), VPSDE())
