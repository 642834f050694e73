"""Checks of the Gaussian-mixture oracle written against the mutants that the older oracle tests
let live (docs/testing.md, "Mutation testing"): the presets' documented parameters, the diagonal
branch of `perturbed`, sampling recomputed from the same generator stream, the constructor's
checks at their boundaries with the field named, and tensors that follow the inputs."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from sde_gen import GaussianMixture, make_preset

from ._mutation_support import foreign_default_device
from .conftest import ALL_SDES_T

f64 = torch.float64


# ---------------------------------------------------------------- presets: the documented parameters
def test_ring2d_parameters():
    """8 Gaussians at angles 2 pi k / 8 on the circle of radius 2, std 0.2, weights (k + 1) / 36."""
    ring = make_preset("ring2d")
    k = np.arange(8)
    means = 2.0 * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1)
    np.testing.assert_allclose(ring.means.numpy(), means, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ring.weights.numpy(), (k + 1) / 36.0, rtol=1e-15)
    np.testing.assert_allclose(ring.covariances().numpy(), np.broadcast_to(0.04 * np.eye(2), (8, 2, 2)), rtol=1e-15)


def test_mixture64d_parameters():
    """4 diagonal components, weights 0.1 to 0.4, log-uniform variances spanning 0.01 to 0.5, and
    the same problem every time it is built (its own seeded generator, not the global one)."""
    torch.manual_seed(0)
    a = make_preset("mixture64d")
    torch.manual_seed(1)
    b = make_preset("mixture64d")
    for name, buf in a.named_buffers():
        # every parameter in float64; the component -> class map is integer
        assert buf.dtype == (torch.long if name == "classes" else f64) and torch.equal(buf, dict(b.named_buffers())[name]), name
    assert a.diagonal and (a.num_components, a.dim) == (4, 64)
    np.testing.assert_allclose(a.weights.numpy(), [0.1, 0.2, 0.3, 0.4], rtol=1e-15)
    v = a.eigvals
    assert float(v.min()) >= 0.01 and float(v.max()) <= 0.5
    # 256 log-uniform draws reach within 3 % of the range's ends in log scale
    span = math.log(50.0)
    assert math.log(float(v.min()) / 0.01) < 0.03 * span and math.log(0.5 / float(v.max())) < 0.03 * span


def test_gaussian16d_parameters():
    """One Gaussian, full covariance with eigenvalues geometric from 0.05 to 2, built the same way
    each time."""
    torch.manual_seed(0)
    a = make_preset("gaussian16d")
    torch.manual_seed(1)
    b = make_preset("gaussian16d")
    assert torch.equal(a.means, b.means) and torch.equal(a.covariance(), b.covariance())
    assert a.num_components == 1 and not a.diagonal
    np.testing.assert_allclose(np.linalg.eigvalsh(a.covariance().numpy()), np.geomspace(0.05, 2.0, 16), rtol=1e-12)


def test_preset_errors_and_classmethod():
    with pytest.raises(ValueError, match=r"^preset must be one of"):
        make_preset("ring3d")
    for name in ("ring2d", "gaussian16d"):
        a, b = GaussianMixture.preset(name), make_preset(name)
        assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers()))


# ---------------------------------------------------------------- construction
def test_parameters_stored_in_float64_from_python_numbers():
    w = [0.1, 0.2, 0.3, 0.4]
    gm = GaussianMixture(w, [[0.1], [0.2], [0.3], [0.7]], [[0.3], [0.5], [0.7], [1.1]])
    assert all(b.dtype == (torch.long if n == "classes" else f64) for n, b in gm.named_buffers())
    assert gm.classes.tolist() == [0, 1, 2, 3]  # default: one class per component
    assert gm.weights.tolist() == w and gm.means[:, 0].tolist() == [0.1, 0.2, 0.3, 0.7]
    g = GaussianMixture.gaussian([0.1, 0.2], [0.3, 0.7])
    assert all(b.dtype == (torch.long if n == "classes" else f64) for n, b in g.named_buffers())
    assert g.eigvals[0].tolist() == [0.3, 0.7]


@pytest.mark.parametrize("args,message", [
    ((["a"], [[0.0]], [[1.0]]), r"^weights must be an array of real numbers"),
    (([1.0], [["x"]], [[1.0]]), r"^means must be an array of real numbers"),
    (([1.0], [[0.0]], [["x"]]), r"^covariances must be an array of real numbers"),
    (([1.0], [[math.nan]], [[1.0]]), r"^means must be finite"),
    (([[1.0]], [[0.0]], [[1.0]]), r"^weights must have shape \(K,\) with K >= 1; got \(1, 1\)"),
    (([-0.5, 1.5], [[0.0], [1.0]], [[1.0], [1.0]]), r"^weights must be >= 0 \(allowed: \[0, 1\], summing to 1\); got a negative weight$"),
    (([0.5, 0.6], [[0.0], [1.0]], [[1.0], [1.0]]), r"^weights must sum to 1 \(allowed: within 1e-6\); got sum 1\.1"),
    (([0.5, 0.5], [0.0, 1.0], [[1.0], [1.0]]), r"^means must have shape \(K, D\) = \(2, D\); got \(2,\)"),
    (([1.0], [[0.0, 0.0]], [[1.0, 0.0]]), r"^covariances \(diagonal\) must be > 0 \(positive definite\); got a variance <= 0$"),
    (([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 0.0]]]), r"^covariances must be positive definite; got a matrix with eigenvalue 0\.0 <= 0$"),
    (([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]]), r"^covariances must have shape \(K, D, D\) = \(1, 2, 2\) or \(K, D\) = \(1, 2\); got \(1, 3\)$"),
])
def test_constructor_errors_name_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(*args)


def test_gaussian_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^mean must be an array of real numbers"):
        GaussianMixture.gaussian(["x"], [1.0])
    with pytest.raises(ValueError, match=r"^covariance must be finite"):
        GaussianMixture.gaussian([0.0], [math.inf])


def test_weights_may_be_zero_and_sum_within_tolerance():
    GaussianMixture([0.0, 1.0], [[0.0], [1.0]], [[1.0], [1.0]])
    GaussianMixture([0.5, 0.5 + 5e-7], [[0.0], [1.0]], [[1.0], [1.0]])


@pytest.mark.parametrize("asym", [
    lambda c: c + torch.tensor([[0.0, 1e-9], [0.0, 0.0]], dtype=f64),   # above atol on a zero entry
    lambda c: c + torch.tensor([[0.0, 2e-8], [0.0, 0.0]], dtype=f64),
    lambda c: c + torch.tensor([[0.0, 1e-3], [0.0, 0.0]], dtype=f64),
])
def test_non_symmetric_covariance_rejected(asym):
    cov = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=f64)
    with pytest.raises(ValueError, match=r"^covariances must be symmetric; got a non-symmetric matrix$"):
        GaussianMixture([1.0], [[0.0, 0.0]], asym(cov)[None])
    # relative asymmetry 1e-8 on entries of size 1: above rtol 1e-10
    big = torch.tensor([[[1.0, 1.0], [1.0 + 1e-8, 3.0]]], dtype=f64)
    with pytest.raises(ValueError, match=r"^covariances must be symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], big)
    # rounding-level asymmetry is accepted
    GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 0.5], [0.5 + 1e-14, 3.0]]], dtype=f64))


def test_repr_names_the_kind():
    assert "num_components=8, num_classes=8, dim=2, covariances=diagonal" in repr(make_preset("ring2d"))
    assert "num_components=1, num_classes=1, dim=16, covariances=full" in repr(make_preset("gaussian16d"))


# ---------------------------------------------------------------- densities
@pytest.mark.parametrize("sde", ALL_SDES_T[:3], ids=lambda s: type(s).__name__)
def test_perturbed_diagonal_mixture_is_the_marginal(sde):
    """The diagonal branch: C_k(t) = a^2 diag(var_k) + s^2 I, means a mu_k, same weights."""
    gm = make_preset("ring2d")
    t = 0.37
    a, s = (float(c) for c in sde.marginal_coeffs(torch.tensor([t], dtype=f64)))
    pt = gm.perturbed(sde, t)
    assert pt.diagonal
    torch.testing.assert_close(pt.covariances(), a ** 2 * gm.covariances() + s ** 2 * torch.eye(2, dtype=f64), rtol=1e-14, atol=0)
    torch.testing.assert_close(pt.means, a * gm.means, rtol=1e-15, atol=0)
    assert torch.equal(pt.weights, gm.weights)


def _scipy_log_posterior(gm, x, a, s):
    logs = np.stack([math.log(float(w)) + multivariate_normal(a * m.numpy(), a ** 2 * c.numpy() + s ** 2 * np.eye(gm.dim)).logpdf(x.numpy())
                     for w, m, c in zip(gm.weights, gm.means, gm.covariances())], 1)
    return logs - np.logaddexp.reduce(logs, axis=1, keepdims=True)


def test_component_posterior_at_time_t_matches_scipy():
    gm, sde = make_preset("ring2d"), ALL_SDES_T[0]
    x = torch.tensor([[1.0, 0.5], [-1.5, 0.2], [0.1, -1.9]], dtype=f64)
    t = torch.full((3,), 0.4, dtype=f64)
    a, s = (float(c[0]) for c in sde.marginal_coeffs(t))
    np.testing.assert_allclose(gm.component_log_posterior(x, t, sde).numpy(), _scipy_log_posterior(gm, x, a, s), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.component_log_posterior(x).numpy(), _scipy_log_posterior(gm, x, 1.0, 0.0), rtol=1e-10, atol=1e-10)


def test_score_fn_is_the_score_at_t():
    gm, sde = make_preset("gaussian16d"), ALL_SDES_T[1]
    x = gm.sample(5, torch.Generator().manual_seed(0), dtype=f64)
    t = torch.linspace(0.1, 0.9, 5, dtype=f64)
    assert torch.equal(gm.score_fn(sde)(x, t), gm.score(x, t, sde))


def test_x_must_be_two_dimensional():
    gm = make_preset("ring2d")
    with pytest.raises(ValueError, match=r"^x must have shape \(B, 2\); got \(4, 2, 1\)$"):
        gm.log_prob(torch.zeros(4, 2, 1))
    with pytest.raises(ValueError, match=r"^x must have shape \(B, 2\); got \(4, 3\)$"):
        gm.log_prob(torch.zeros(4, 3))


def test_densities_follow_the_device_of_x():
    gm = make_preset("gaussian16d")
    x = torch.empty(3, 16, device="meta")
    assert gm.log_prob(x).device.type == "meta" and gm.score(x).device.type == "meta"
    xc = torch.zeros(3, 16)
    with foreign_default_device():
        assert gm.log_prob(xc).device.type == "cpu" and gm.score(xc).device.type == "cpu"


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", ["ring2d", "gaussian16d"])
def test_sample_is_the_affine_map_of_the_stream(name):
    """x = mu_k + U_k diag(sqrt(lambda_k)) z with the component drawn first and z ~ N(0, I) in
    float64 next, from the same generator."""
    gm = make_preset(name)
    x, labels = gm.sample(50, torch.Generator().manual_seed(3), dtype=f64, return_labels=True)
    g = torch.Generator().manual_seed(3)
    k = torch.multinomial(gm.weights, 50, replacement=True, generator=g)
    z = torch.randn(50, gm.dim, generator=g, dtype=f64)
    assert torch.equal(k, labels)
    root = gm.eigvecs[k] * gm.eigvals[k].sqrt()[:, None, :] if not gm.diagonal else torch.diag_embed(gm.eigvals[k].sqrt())
    torch.testing.assert_close(x, gm.means[k] + (root @ z[:, :, None])[:, :, 0], rtol=1e-13, atol=1e-13)


def test_sample_device_comes_from_generator_then_module():
    gm = make_preset("ring2d")
    with foreign_default_device():
        assert gm.sample(4, torch.Generator().manual_seed(0)).device.type == "cpu"
        assert gm.sample(4).device.type == "cpu"
        assert gm.sample(4, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1"):
        gm.sample(0)
