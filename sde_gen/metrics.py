"""Sample-quality metrics against exact targets.

    sliced Wasserstein-2   SW2(p, q)^2 = E_theta W2(theta#p, theta#q)^2 over uniform directions
                           theta on the sphere; 1-D W2 from sorted samples (Rabin et al. 2011;
                           Bonneel et al. 2015)
    noise floor            the same distance between two independent sets of exact samples of the
                           same size: what a perfect sampler scores, as mean and std over replicates
    mode-weight error      total-variation distance between the mixture weights and the fraction
                           of samples assigned to each component (by posterior responsibility)
    Bures-Wasserstein      the exact W2 between Gaussians N(m1, C1) and N(m2, C2):
                           |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^1/2 C1 C2^1/2)^1/2) (Dowson & Landau 1982)
    Frechet distance       the squared W2 between the Gaussians fitted to two feature sets (N, D):
                           the quantity behind FID (Heusel et al. 2017, eq. 6), here for any features
    kernel distance        unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
                           averaged over random subsets: KID (Binkowski et al. 2018, Sec. 3 and eq. 2)
    classifier features    the penultimate layer of a noise-conditional classifier trained by this
                           project, at t = t_min: a feature space for the Frechet distance on images
                           that needs no downloaded weights

Everything is computed in float64 on the device of the inputs.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from ._validation import check_positive_int

__all__ = [
    "sliced_wasserstein",
    "noise_floor",
    "mode_weight_error",
    "bures_wasserstein",
    "gaussian_w2_to_target",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "kid",
    "classifier_features",
]


def _sorted_quantiles(x: torch.Tensor, k: int) -> torch.Tensor:
    """(k, P) quantiles at levels (i + 1/2) / k of each column of the sorted (n, P) array."""
    n = x.shape[0]
    if n == k:
        return x
    pos = (torch.arange(k, dtype=x.dtype, device=x.device) + 0.5) * n / k - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(x.dtype)).clamp(0, 1)[:, None]
    return x[lo] * (1 - w) + x[hi] * w


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 1000,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between two sample sets (B, *event) (sizes may differ).

    Args:
        x, y: samples; flattened to (n, D) and (m, D).
        num_projections: random directions (uniform on the sphere).
        generator: randomness for the directions (use the same one to compare runs).

    Returns:
        A 0-d float64 tensor, sqrt(mean over directions of the squared 1-D W2).
    """
    check_positive_int("num_projections", num_projections)
    x = x.flatten(1).to(torch.float64)
    y = y.flatten(1).to(device=x.device, dtype=torch.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    gen_device = generator.device if generator is not None else x.device
    theta = torch.randn(x.shape[1], num_projections, generator=generator, device=gen_device, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    k = max(px.shape[0], py.shape[0])
    diff = _sorted_quantiles(px, k) - _sorted_quantiles(py, k)
    return diff.pow(2).mean().sqrt()


def noise_floor(
    sample_fn: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    replicates: int = 10,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, float]:
    """Distance between independent exact sample sets of size `n`: the best a sampler can score.

    Args:
        sample_fn: `sample_fn(n, generator)` draws n exact samples.
        n: sample size (use the size of the sample set being judged).
        distance: `distance(x, y)` -> 0-d tensor, e.g. `sliced_wasserstein`.
        replicates: number of independent pairs.
        generator: randomness.

    Returns:
        {"mean": ..., "std": ..., "replicates": ...} over the replicates.
    """
    check_positive_int("replicates", replicates)
    vals = torch.stack([distance(sample_fn(n, generator), sample_fn(n, generator)).to(torch.float64) for _ in range(replicates)])
    std = float(vals.std()) if replicates > 1 else 0.0
    return {"mean": float(vals.mean()), "std": std, "replicates": replicates}


def mode_weight_error(samples: torch.Tensor, mixture) -> torch.Tensor:
    """Total-variation distance between the mixture weights and the empirical component
    frequencies of `samples` (each sample assigned to its most responsible component).

    Args:
        samples: (n, D). mixture: a `GaussianMixture`.

    Returns:
        0-d float64 tensor in [0, 1].
    """
    x = samples.to(torch.float64)
    labels = mixture.component_log_posterior(x).argmax(1)
    freq = torch.bincount(labels, minlength=mixture.num_components).to(torch.float64) / x.shape[0]
    return 0.5 * (freq - mixture.weights.to(x.device)).abs().sum()


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.transpose(-1, -2)


def bures_wasserstein(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Exact W2 distance between N(m1, c1) and N(m2, c2); means (D,), covariances (D, D)."""
    m1, c1, m2, c2 = (v.to(torch.float64) for v in (m1, c1, m2, c2))
    root2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(root2 @ c1 @ root2)
    w2sq = (m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * cross)
    return w2sq.clamp_min(0).sqrt()


def gaussian_w2_to_target(samples: torch.Tensor, mixture) -> torch.Tensor:
    """Bures-Wasserstein distance between the Gaussian fitted to `samples` (mean, covariance)
    and the target's mean and covariance (exact when the target is a single Gaussian)."""
    x = samples.flatten(1).to(torch.float64)
    dev = x.device
    return bures_wasserstein(x.mean(0), torch.cov(x.T), mixture.mean().to(dev), mixture.covariance().to(dev))


def _check_features(features_a: torch.Tensor, features_b: torch.Tensor, min_rows: int):
    """Both (N, D) with the same D and at least `min_rows` rows, as float64 on a's device."""
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] < min_rows or f.shape[1] < 1:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, D) with N >= {min_rows} and D >= 1; got {got}")
        if f.is_complex() or not (f.is_floating_point() or f.dtype in (torch.int64, torch.int32)):
            raise ValueError(f"{name} must be a real tensor; got dtype {f.dtype}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have the same feature dimension D; got {features_a.shape[1]} and "
            f"{features_b.shape[1]}"
        )
    a = features_a.to(torch.float64)
    return a, features_b.to(device=a.device, dtype=torch.float64)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """Frechet distance between the Gaussians fitted to two feature sets (the FID formula).

    d^2 = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a^1/2 S_b S_a^1/2)^1/2
    (Dowson & Landau 1982; Heusel et al. 2017, eq. 6), with unbiased covariances (N - 1). The
    cross term uses the symmetric PSD form S_a^1/2 S_b S_a^1/2, whose square root comes from `eigh`
    with eigenvalues clamped at 0, so rank-deficient covariances (N <= D) are fine; the total is
    clamped at 0 against round-off. Like FID, this is the *squared* W2 distance. With few rows
    (N_a N_b min(N_a, N_b) < D^3) the cross term is computed exactly and faster as the sum of the
    singular values of X_b X_a^T / sqrt((N_a - 1)(N_b - 1)) (X: the centred rows).

    Args:
        features_a: (N_a, D) features, N_a >= 2.
        features_b: (N_b, D) features, N_b >= 2 (sizes may differ).

    Returns:
        0-d float64 tensor >= 0 on the device of `features_a`.
    """
    a, b = _check_features(features_a, features_b, 2)
    (n_a, dim), n_b = a.shape, b.shape[0]
    if n_a * n_b * min(n_a, n_b) >= dim ** 3:
        cov_a, cov_b = torch.cov(a.T).reshape(dim, dim), torch.cov(b.T).reshape(dim, dim)
        return frechet_distance_from_statistics(a.mean(0), cov_a, b.mean(0), cov_b)
    # Fewer rows than features (e.g. 2048-D Inception features of a few hundred images): with
    # centred rows X_a, X_b, S_a = X_a^T X_a / (N_a - 1) and S_b likewise, the non-zero eigenvalues
    # of S_a^1/2 S_b S_a^1/2 are those of S_a S_b, hence of (X_b X_a^T)(X_a X_b^T) / ((N_a-1)(N_b-1)):
    # the cross term is the nuclear norm of the small (N_b, N_a) matrix X_b X_a^T, no D x D root needed
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    trace_a, trace_b = xa.pow(2).sum() / (n_a - 1), xb.pow(2).sum() / (n_b - 1)
    trace_cross = torch.linalg.svdvals(xb @ xa.T).sum() / math.sqrt((n_a - 1) * (n_b - 1))
    d2 = (mu_a - mu_b).pow(2).sum() + trace_a + trace_b - 2 * trace_cross
    return d2.clamp_min(0)


def frechet_distance_from_statistics(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                                     cov_b: torch.Tensor) -> torch.Tensor:
    """The Frechet distance of `frechet_distance` from the fitted Gaussians' means and covariances.

    For cached reference statistics (`sde_gen.inception.reference_statistics`).

    Args:
        mu_a, mu_b: (D,) means. cov_a, cov_b: (D, D) symmetric PSD covariances.

    Returns:
        0-d float64 tensor >= 0 on the device of `mu_a`.
    """
    dim = mu_a.shape[-1] if mu_a.ndim == 1 else -1
    for name, v, shape in (("mu_a", mu_a, (dim,)), ("mu_b", mu_b, (dim,)), ("cov_a", cov_a, (dim, dim)),
                           ("cov_b", cov_b, (dim, dim))):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or dim < 1:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{name} must have shape {'(D,)' if len(shape) == 1 else '(D, D)'} with the D of mu_a "
                             f"(means (D,), covariances (D, D)); got {got}")
    dev = mu_a.device
    mu_a, cov_a, mu_b, cov_b = (v.to(device=dev, dtype=torch.float64) for v in (mu_a, cov_a, mu_b, cov_b))
    root_a = _sqrtm_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    inner = 0.5 * (inner + inner.T)  # symmetric up to round-off; eigh reads one triangle
    trace_cross = torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()
    d2 = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_cross
    return d2.clamp_min(0)


def _polynomial_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(x, y) = (x.y / D + 1)^3; x (m, D), y (m, D)."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    # U-statistics: the diagonal terms k(x_i, x_i) are left out of the within-set means
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def kid(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: Optional[torch.Generator] = None,
):
    """Kernel distance (KID): unbiased MMD^2 with the cubic polynomial kernel, over random subsets.

    k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, Sec. 3). Each of `subsets` draws picks
    `subset_size` rows of each set without replacement and computes the unbiased estimator, whose
    expectation is the population MMD^2 (0 when both sets come from one distribution; single
    estimates can be slightly negative).

    Args:
        features_a, features_b: (N_a, D), (N_b, D) features with N_a, N_b >= subset_size.
        subsets: number of random subsets (>= 1).
        subset_size: rows per subset (>= 2).
        generator: randomness for the subsets.

    Returns:
        (mean, std) over the subsets, 0-d float64 tensors (std 0 for a single subset).
    """
    check_positive_int("subsets", subsets)
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2; got {subset_size!r}")
    a, b = _check_features(features_a, features_b, 2)
    if subset_size > min(a.shape[0], b.shape[0]):
        raise ValueError(
            f"subset_size must be <= the size of each feature set (allowed: 2..{min(a.shape[0], b.shape[0])}); "
            f"got {subset_size}"
        )
    gen_device = generator.device if generator is not None else torch.device("cpu")
    values = []
    for _ in range(subsets):
        ia = torch.randperm(a.shape[0], generator=generator, device=gen_device)[:subset_size].to(a.device)
        ib = torch.randperm(b.shape[0], generator=generator, device=gen_device)[:subset_size].to(a.device)
        values.append(_polynomial_mmd2_unbiased(a[ia], b[ib]))
    v = torch.stack(values)
    return v.mean(), (v.std() if subsets > 1 else torch.zeros((), dtype=v.dtype, device=v.device))


@torch.no_grad()
def classifier_features(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    t: Optional[float] = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """Penultimate-layer features of a noise-conditional classifier at one time.

    A classifier trained by this project (`NoiseConditionalClassifier` over `UNetClassifier` for
    images, `MLPClassifier` for vectors) gives a feature space for `frechet_distance` and `kid`
    that runs offline: the pooled activations just before the class head, at t = t_min (default:
    the classifier SDE's eps), where x_t is the clean data.

    Args:
        classifier: a module with `features(x, t)` and an `sde` (a `NoiseConditionalClassifier`).
        x: (N, *event) inputs, on the classifier's device.
        t: the time fed to the classifier; None: `classifier.sde.eps`. Must lie in (0, T).
        batch_size: rows per forward pass.

    Returns:
        (N, F) float64 features on x's device.
    """
    if not callable(getattr(classifier, "features", None)) or getattr(classifier, "sde", None) is None:
        raise ValueError(
            "classifier must be a NoiseConditionalClassifier (a module with `features(x, t)` and `sde`); "
            f"got {type(classifier).__name__}"
        )
    check_positive_int("batch_size", batch_size)
    sde = classifier.sde
    t = sde.eps if t is None else t
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < sde.T:
        raise ValueError(f"t must be a number in (0, T) = (0, {sde.T}); got {t!r}")
    param = next(classifier.parameters(), None)
    dtype = param.dtype if param is not None else x.dtype
    was_training = classifier.training
    classifier.eval()
    try:
        out = []
        for chunk in x.split(batch_size):
            tt = torch.full((chunk.shape[0],), float(t), dtype=dtype, device=chunk.device)
            out.append(classifier.features(chunk.to(dtype), tt).to(torch.float64))
    finally:
        classifier.train(was_training)
    return torch.cat(out)
