"""Image-quality metrics (issue 14, item 1): the Frechet distance against closed forms on Gaussians
(commuting and non-commuting covariances), its symmetry, zero on identical sets, the exact shift
term; the kernel distance (KID) against a brute-force double loop and its expectation against the
closed-form polynomial-kernel MMD^2 of two 1-D Gaussians; bad input fails in one clear error."""
import itertools
import math

import pytest
import torch

from sde_gen import frechet_distance, kid
from sde_gen.metrics import bures_wasserstein


def _with_moments(mean, cov, n, seed):
    """n points whose empirical mean and unbiased covariance are exactly `mean` and `cov`."""
    g = torch.Generator().manual_seed(seed)
    d = mean.shape[0]
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # empirical cov = I
    return mean + z @ torch.linalg.cholesky(cov).T


def test_diagonal_covariances_match_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0, -0.5], dtype=torch.float64)
    l1, l2 = torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25, 0.5], dtype=torch.float64)
    a = _with_moments(mu1, torch.diag(l1), 400, 0)
    b = _with_moments(mu2, torch.diag(l2), 300, 1)
    exact = (mu1 - mu2).pow(2).sum() + (l1.sqrt() - l2.sqrt()).pow(2).sum()
    fd = frechet_distance(a, b)
    assert fd.dtype == torch.float64 and fd.ndim == 0
    torch.testing.assert_close(fd, exact, rtol=1e-10, atol=1e-10)


def test_non_commuting_covariances_match_the_2x2_closed_form():
    # for 2x2 PSD M, tr M^1/2 = sqrt(tr M + 2 sqrt(det M)); with M = C1^1/2 C2 C1^1/2:
    # tr M = tr(C1 C2), det M = det C1 det C2 -- no matrix square root needed
    c1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[0.5, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    assert not torch.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([-0.2, 0.4], dtype=torch.float64)
    a, b = _with_moments(mu1, c1, 500, 2), _with_moments(mu2, c2, 700, 3)
    cross = torch.sqrt(torch.trace(c1 @ c2) + 2 * torch.sqrt(torch.det(c1) * torch.det(c2)))
    exact = (mu1 - mu2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross
    torch.testing.assert_close(frechet_distance(a, b), exact, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(frechet_distance(b, a), exact, rtol=1e-10, atol=1e-10)
    # and it is the squared Bures-Wasserstein distance of the fitted Gaussians
    torch.testing.assert_close(bures_wasserstein(mu1, c1, mu2, c2) ** 2, exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n, d", [(200, 8), (12, 40)], ids=["full_rank", "rank_deficient"])
def test_identical_sets_give_zero_and_never_negative(n, d):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    fd = frechet_distance(x, x)
    scale = torch.cov(x.T).trace()
    assert 0 <= float(fd) <= 1e-6 * float(scale)
    # a pure shift adds exactly |c|^2: the covariances are identical
    c = torch.linspace(-1, 1, d, dtype=torch.float64)
    torch.testing.assert_close(frechet_distance(x, x + c), c.pow(2).sum(), rtol=1e-6, atol=1e-6 * float(scale))


def test_halves_of_one_data_set_are_close_and_shifted_data_far():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, 6, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    halves = frechet_distance(x[:2000], x[2000:])
    shifted = frechet_distance(x[:2000], x[2000:] + 1.0)
    # float32 input, float64 result; halves: sampling error only (O(D tr C / N)), shift: |1|^2 * 6
    assert halves.dtype == torch.float64
    assert float(halves) < 0.1 and abs(float(shifted) - 6.0) < 0.3
    assert float(shifted) > 50 * float(halves)


def test_frechet_bad_input_fails_with_one_clear_error():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="features_a must be a tensor of shape \\(N, D\\)"):
        frechet_distance(torch.randn(10), x)
    with pytest.raises(ValueError, match="features_b must be a tensor of shape \\(N, D\\) with N >= 2"):
        frechet_distance(x, torch.randn(1, 3))
    with pytest.raises(ValueError, match="same feature dimension D; got 3 and 4"):
        frechet_distance(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="features_a must be a real tensor"):
        frechet_distance(torch.randn(10, 3, dtype=torch.complex64), x)


# ---------------------------------------------------------------- KID
def _mmd2_brute_force(x, y):
    """The unbiased estimator written as sums over index pairs."""
    d = x.shape[1]
    k = lambda u, v: (float(u @ v) / d + 1) ** 3  # noqa: E731
    m = x.shape[0]
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_equals_the_brute_force_estimator():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(15, 4, generator=g, dtype=torch.float64), torch.randn(15, 4, generator=g, dtype=torch.float64) + 0.3
    mean, std = kid(x, y, subsets=1, subset_size=15, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(mean), _mmd2_brute_force(x, y), rel_tol=1e-12) and float(std) == 0
    # subsets of a smaller size: each one is the estimator on some 8 rows of each set
    mean8, std8 = kid(x, y, subsets=5, subset_size=8, generator=torch.Generator().manual_seed(1))
    assert float(std8) > 0 and mean8.dtype == torch.float64


@pytest.mark.statistical
def test_kid_expectation_is_the_polynomial_mmd_of_two_gaussians(stat_seed):
    # D = 1: k(x, y) = (xy + 1)^3 = 1 + 3xy + 3x^2y^2 + x^3y^3, so
    # MMD^2 = 3 (E x - E y)^2 + 3 (E x^2 - E y^2)^2 + (E x^3 - E y^3)^2 with Gaussian moments
    g = torch.Generator().manual_seed(stat_seed(7))
    (m1, s1), (m2, s2) = (0.0, 1.0), (0.3, 1.2)
    moments = lambda m, s: (m, m * m + s * s, m ** 3 + 3 * m * s * s)  # noqa: E731
    exact = sum(c * (p - q) ** 2 for c, p, q in zip((3, 3, 1), moments(m1, s1), moments(m2, s2)))
    x = m1 + s1 * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    y = m2 + s2 * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    mean, _ = kid(x, y, subsets=20, subset_size=1000, generator=g)
    same, _ = kid(x[:10000], x[10000:], subsets=20, subset_size=1000, generator=g)
    # exact = 3 * 0.09 + 3 * 0.53^2 + 1.323^2 ~ 2.86; the mean over 20 subsets of 1000 has std ~0.25
    assert abs(float(mean) - exact) < 0.25 * exact
    assert abs(float(same)) < 0.2 * exact


def test_kid_bad_input_fails_with_one_clear_error():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="subset_size must be <= the size of each feature set"):
        kid(x, torch.randn(6, 3), subset_size=8)
    with pytest.raises(ValueError, match="subset_size must be an integer >= 2"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets"):
        kid(x, x, subsets=0, subset_size=4)
    with pytest.raises(ValueError, match="same feature dimension"):
        kid(x, torch.randn(10, 2), subset_size=4)
