"""Denoising score matching with the exact oracle score: it is the minimiser, and its excess
loss under a perturbation has the value the theory predicts."""
import math

import pytest
import torch

from sde_gen import DenoisingScoreMatching, dsm_loss, make_preset
from sde_gen.losses import sample_time

from .conftest import ALL_SDES, SDE_IDS

f64 = torch.float64

PERTURBATIONS = {
    "shift": lambda x, s: torch.ones_like(x),
    "linear": lambda x, s: x @ torch.tensor([[0.3, -1.0], [0.7, 0.2]], dtype=x.dtype),
    "scale": lambda x, s: s,
    "bump": lambda x, s: torch.tanh(x.flip(1)),
}


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
def test_exact_score_minimises_dsm(sde, weighting):
    """For any h, E[L(s* + delta h)] - E[L(s*)] = delta^2/2 E[lambda |h|^2] > 0: the cross term
    vanishes exactly because s* is the conditional expectation of grad log p(x_t | x_0)."""
    gm = make_preset("ring2d")
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = gm.sample(n, g, dtype=f64)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=g, dtype=f64)
    noise = torch.randn(x0.shape, generator=g, dtype=f64)
    exact = gm.score_fn(sde)
    base = dsm_loss(exact, sde, x0, weighting, reduction="sum", t=t, noise=noise)
    x_t = sde.perturb(x0, t, noise)
    lam = {"sigma2": sde.marginal_var(t), "likelihood": sde.diffusion(t) ** 2, "none": torch.ones_like(t)}[weighting]
    for name, h in PERTURBATIONS.items():
        s_star = exact(x_t, t)
        hx = h(x_t, s_star)
        for delta in (0.3, -0.3):
            pert = dsm_loss(lambda x, tt: exact(x, tt) + delta * h(x, exact(x, tt)), sde, x0, weighting,
                            reduction="sum", t=t, noise=noise)
            diff = pert - base
            predicted = 0.5 * delta ** 2 * lam * (hx ** 2).sum(1)
            se = float(diff.std()) / math.sqrt(n)
            assert abs(float(diff.mean() - predicted.mean())) < 4 * se + 1e-12, name
            # where the excess is resolvable above the Monte Carlo noise it must be positive
            # (always for sigma2; lambda = 1 weights t -> 0 so heavily that the noise can dominate)
            if weighting == "sigma2" or float(predicted.mean()) > 5 * se:
                assert float(diff.mean()) > 0, f"{name}: perturbation lowered the loss"


def test_reductions_and_weightings_relate_exactly():
    sde = ALL_SDES[0]
    gm = make_preset("mixture64d")
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(64, g, dtype=f64)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(64, generator=g, dtype=f64)
    noise = torch.randn(x0.shape, generator=g, dtype=f64)
    zero = lambda x, tt: torch.zeros_like(x)
    s_mean = dsm_loss(zero, sde, x0, "sigma2", reduction="mean", t=t, noise=noise)
    s_sum = dsm_loss(zero, sde, x0, "sigma2", reduction="sum", t=t, noise=noise)
    # with a zero score the residual is the noise: 1/2 |z|^2
    torch.testing.assert_close(s_sum, 0.5 * (noise ** 2).sum(1))
    torch.testing.assert_close(s_mean * 64, s_sum)
    lik = dsm_loss(zero, sde, x0, "likelihood", reduction="sum", t=t, noise=noise)
    torch.testing.assert_close(lik, s_sum * sde.diffusion(t) ** 2 / sde.marginal_var(t))


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_importance_sampling_is_unbiased(sde):
    """E_{t ~ p}[w(t) phi(t)] = E_{t ~ U}[phi(t)] for a test function phi (here g^2/s^2 capped)."""
    n = 200_000
    g = torch.Generator().manual_seed(2)
    phi = lambda t: torch.log1p(sde.diffusion(t) ** 2 / sde.marginal_var(t))
    t_is, w = sample_time(sde, n, importance_sampling=True, generator=g, dtype=f64)
    assert (t_is >= sde.eps).all() and (t_is <= sde.T).all()
    est = w * phi(t_is)
    # reference: fine trapezoid rule of the uniform average
    grid = torch.linspace(sde.eps, sde.T, 200_001, dtype=f64)
    ref = torch.trapezoid(phi(grid), grid) / (sde.T - sde.eps)
    assert abs(float(est.mean() - ref)) < 4 * float(est.std()) / math.sqrt(n)


def test_module_matches_function_and_validates():
    sde = ALL_SDES[0]
    x0 = make_preset("ring2d").sample(8, torch.Generator().manual_seed(3))
    fn = lambda x, t: -x
    m = DenoisingScoreMatching("likelihood", importance_sampling=True)
    a = m(fn, sde, x0, generator=torch.Generator().manual_seed(4))
    b = dsm_loss(fn, sde, x0, "likelihood", True, generator=torch.Generator().manual_seed(4)).mean()
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="weighting"):
        DenoisingScoreMatching("sigma")
    with pytest.raises(ValueError, match="importance_sampling"):
        DenoisingScoreMatching("sigma2", importance_sampling=True)
    with pytest.raises(ValueError, match="reduction"):
        dsm_loss(fn, sde, x0, reduction="avg")
