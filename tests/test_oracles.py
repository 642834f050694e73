"""Oracles against independent computations: autograd of the perturbed log-density, scipy's
multivariate normal, Monte Carlo moments, and stability at the extremes."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from sde_gen import PRESETS, VPSDE, GaussianMixture, make_preset

from .conftest import ALL_SDES, SDE_IDS

f64 = torch.float64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_log_prob_matches_scipy(name):
    gm = make_preset(name)
    x = gm.sample(20, torch.Generator().manual_seed(0), dtype=f64)
    covs = gm.covariances().numpy()
    comps = np.stack(
        [multivariate_normal(gm.means[k].numpy(), covs[k]).logpdf(x.numpy()) for k in range(gm.num_components)],
        axis=1,
    ).reshape(20, -1)
    ref = logsumexp(comps + np.log(gm.weights.numpy()), axis=1)
    np.testing.assert_allclose(gm.log_prob(x).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_is_gradient_of_perturbed_log_density(name, sde, dtype):
    gm = make_preset(name)
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(6, g, dtype=dtype)
    t = torch.tensor([sde.eps, 2 * sde.eps, 0.1, 0.5, 0.9, sde.T], dtype=dtype)
    x = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=dtype)).requires_grad_(True)
    logp = gm.log_prob(x, t, sde)
    (auto,) = torch.autograd.grad(logp.sum(), x)
    score = gm.score(x.detach(), t, sde)
    assert score.dtype == dtype and torch.isfinite(score).all()
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == f64 else dict(rtol=2e-3, atol=2e-3)
    scale = auto.abs().amax(1, keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(score / scale, auto / scale, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_finite_far_from_data_and_at_time_extremes(dtype):
    for name in sorted(PRESETS):
        gm = make_preset(name)
        for sde in ALL_SDES:
            x = 1e3 * torch.randn(4, gm.dim, generator=torch.Generator().manual_seed(2), dtype=dtype)
            for t in (sde.eps, sde.T):
                assert torch.isfinite(gm.score(x, t, sde)).all()
                assert torch.isfinite(gm.log_prob(x, t, sde)).all()


def test_thousand_dimensional_mixture_is_stable():
    g = torch.Generator().manual_seed(3)
    K, D = 3, 1000
    gm = GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), 3 * torch.randn(K, D, generator=g), 0.05 + torch.rand(K, D, generator=g))
    sde = VPSDE()
    for dtype in (torch.float32, f64):
        x = gm.sample(4, g, dtype=dtype).requires_grad_(True)
        for t in (sde.eps, 0.5, sde.T):
            logp = gm.log_prob(x, t, sde)
            (auto,) = torch.autograd.grad(logp.sum(), x)
            score = gm.score(x.detach(), t, sde)
            assert torch.isfinite(score).all() and torch.isfinite(logp).all()
            rtol = 1e-9 if dtype == f64 else 1e-3
            torch.testing.assert_close(score, auto, rtol=rtol, atol=rtol * float(auto.abs().max()))


def test_perturbed_mixture_is_the_marginal():
    gm = make_preset("gaussian16d")
    for sde in ALL_SDES:
        pt = gm.perturbed(sde, 0.4 * sde.T)
        x = pt.sample(8, torch.Generator().manual_seed(4), dtype=f64)
        torch.testing.assert_close(pt.log_prob(x), gm.log_prob(x, 0.4 * sde.T, sde), rtol=1e-10, atol=1e-10)


def test_sample_moments_match_mixture_moments():
    gm = make_preset("ring2d")
    n = 200_000
    x, labels = gm.sample(n, torch.Generator().manual_seed(5), dtype=f64, return_labels=True)
    se = (gm.covariance().diagonal() / n).sqrt()
    assert ((x.mean(0) - gm.mean()).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), rtol=0.02, atol=0.02)
    freq = torch.bincount(labels, minlength=8).double() / n
    assert ((freq - gm.weights).abs() < 4 * (gm.weights * (1 - gm.weights) / n).sqrt()).all()


def test_component_posterior_sums_to_one_and_identifies_modes():
    gm = make_preset("ring2d")
    x, labels = gm.sample(500, torch.Generator().manual_seed(6), dtype=f64, return_labels=True)
    logpost = gm.component_log_posterior(x)
    torch.testing.assert_close(logpost.exp().sum(1), torch.ones(500, dtype=f64))
    assert (logpost.argmax(1) == labels).double().mean() > 0.99


def test_presets_have_the_promised_structure():
    ring = make_preset("ring2d")
    assert ring.dim == 2 and ring.num_components == 8 and len(set(ring.weights.tolist())) == 8
    radii = ring.means.norm(dim=1)
    torch.testing.assert_close(radii, torch.full_like(radii, float(radii[0])))
    mix = make_preset("mixture64d")
    assert mix.dim == 64 and mix.num_components >= 2 and mix.diagonal
    assert float(mix.eigvals.max() / mix.eigvals.min()) > 10  # anisotropic
    gauss = make_preset("gaussian16d")
    assert gauss.dim == 16 and gauss.num_components == 1 and not gauss.diagonal
    off = gauss.covariance() - torch.diag(gauss.covariance().diagonal())
    assert float(off.abs().max()) > 0.05  # a genuinely full covariance


def test_sampling_follows_generator_and_is_reproducible():
    gm = make_preset("mixture64d")
    a = gm.sample(10, torch.Generator().manual_seed(7))
    b = gm.sample(10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.get_default_dtype()
