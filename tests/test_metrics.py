"""Metrics against closed forms: Gaussian W2, projections of shifted Gaussians, scipy's sqrtm."""
import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from sde_gen import make_preset
from sde_gen.metrics import bures_wasserstein, gaussian_w2_to_target, mode_weight_error, noise_floor, sliced_wasserstein

f64 = torch.float64


def test_sliced_w2_of_a_shift_is_norm_over_sqrt_dim():
    """For y = x + m: every 1-D projection shifts by theta.m, so SW2^2 = E[(theta.m)^2] = |m|^2 / D."""
    g = torch.Generator().manual_seed(0)
    D = 8
    x = torch.randn(200, D, generator=g, dtype=f64)  # y is an exact shift of x: no sampling noise
    m = torch.linspace(-1, 1, D, dtype=f64)
    sw = sliced_wasserstein(x, x + m, num_projections=20000, generator=g)
    assert float(sw) == pytest.approx(float(m.norm()) / math.sqrt(D), rel=0.02)
    assert float(sliced_wasserstein(x, x.clone(), generator=g)) == 0.0


def test_sliced_w2_unequal_sizes_matches_1d_quantile_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 1, generator=g, dtype=f64)
    y = 2.0 * torch.randn(1000, 1, generator=g, dtype=f64)
    # N(0,1) vs N(0,4) in 1-D: W2 = |1 - 2| = 1; sign of the single direction does not matter
    assert float(sliced_wasserstein(x, y, num_projections=4, generator=g)) == pytest.approx(1.0, abs=0.08)


def test_bures_wasserstein_matches_scipy_and_commuting_case():
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(5, 5, generator=g, dtype=f64), torch.randn(5, 5, generator=g, dtype=f64)
    c1, c2 = A @ A.T + 0.1 * torch.eye(5, dtype=f64), B @ B.T + 0.1 * torch.eye(5, dtype=f64)
    m1, m2 = torch.randn(5, generator=g, dtype=f64), torch.randn(5, generator=g, dtype=f64)
    r2 = sqrtm(c2.numpy())
    ref = np.sum((m1 - m2).numpy() ** 2) + np.trace(c1.numpy() + c2.numpy() - 2 * np.real(sqrtm(r2 @ c1.numpy() @ r2)))
    assert float(bures_wasserstein(m1, c1, m2, c2)) == pytest.approx(math.sqrt(ref), rel=1e-8)
    d1, d2 = torch.tensor([1.0, 4.0], dtype=f64), torch.tensor([9.0, 1.0], dtype=f64)
    expected = math.sqrt(float(((d1.sqrt() - d2.sqrt()) ** 2).sum()))
    assert float(bures_wasserstein(torch.zeros(2, dtype=f64), torch.diag(d1), torch.zeros(2, dtype=f64), torch.diag(d2))) == pytest.approx(expected)


def test_gaussian_w2_of_exact_samples_shrinks_with_n():
    gm = make_preset("gaussian16d")
    g = torch.Generator().manual_seed(3)
    small = float(gaussian_w2_to_target(gm.sample(1000, g, dtype=f64), gm))
    large = float(gaussian_w2_to_target(gm.sample(64000, g, dtype=f64), gm))
    assert large < small / 4  # ~1/sqrt(n) decay: 64x more samples, 8x smaller


def test_mode_weight_error():
    gm = make_preset("ring2d")
    g = torch.Generator().manual_seed(4)
    x, labels = gm.sample(20000, g, dtype=f64, return_labels=True)
    assert float(mode_weight_error(x, gm)) < 0.02
    only_last = x[labels == 7]
    assert float(mode_weight_error(only_last, gm)) == pytest.approx(1 - float(gm.weights[7]), abs=1e-3)


def test_noise_floor_reports_mean_and_spread():
    gm = make_preset("ring2d")
    g = torch.Generator().manual_seed(5)
    floor = noise_floor(lambda n, gen: gm.sample(n, gen, dtype=f64), 2000, lambda a, b: sliced_wasserstein(a, b, 200, g), replicates=6, generator=g)
    assert floor["replicates"] == 6 and floor["mean"] > 0 and floor["std"] > 0
