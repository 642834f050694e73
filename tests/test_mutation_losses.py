"""Exact checks of `sample_time` and `dsm_loss` written against the mutants that the older loss
tests let live (docs/testing.md, "Mutation testing"): the uniform and importance-sampled time
draws recomputed from the same generator stream, the importance weight against an autograd
density, every weighting against its formula, dtype and device following the inputs, and the
defaults and error messages of the options."""
import pytest
import torch

from sde_gen import DenoisingScoreMatching, dsm_loss, make_preset
from sde_gen.losses import sample_time

from ._mutation_support import foreign_default_device
from .conftest import ALL_SDES_T, SDE_T_IDS

f64 = torch.float64


def _u(seed, n):
    """The uniforms `sample_time` draws first from a generator seeded `seed` (float64)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=f64)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_uniform_times_are_the_affine_map_of_the_stream(sde):
    """t = eps + (T - eps) u with u the float64 uniforms of the generator; weights exactly one."""
    for dtype in (torch.float32, f64):
        t, w = sample_time(sde, 64, generator=torch.Generator().manual_seed(5), dtype=dtype)
        expected = (sde.eps + (sde.T - sde.eps) * _u(5, 64)).to(dtype)
        assert t.dtype == w.dtype == dtype and t.shape == w.shape == (64,)
        torch.testing.assert_close(t, expected, rtol=0, atol=0)
        assert torch.equal(w, torch.ones(64, dtype=dtype))


def _density(sde, t):
    """p(t) of the log-SNR-uniform draw, -d lambda/dt / (lambda(eps) - lambda(T)), by autograd."""
    t = t.detach().to(f64).requires_grad_(True)
    lam = sde.half_log_snr(t)
    (dlam,) = torch.autograd.grad(lam.sum(), t)
    ends = sde.half_log_snr(torch.tensor([sde.T, sde.eps], dtype=f64))
    return -dlam / (ends[1] - ends[0])


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_importance_times_and_weights_exact(sde):
    """lambda(t) = lambda(T) + (lambda(eps) - lambda(T)) u for the same u, and the weight is the
    likelihood ratio 1 / (p(t) (T - eps)) with p from autograd of the half log-SNR."""
    t, w = sample_time(sde, 64, True, generator=torch.Generator().manual_seed(6), dtype=f64)
    assert t.dtype == w.dtype == f64
    ends = sde.half_log_snr(torch.tensor([sde.T, sde.eps], dtype=f64))
    torch.testing.assert_close(sde.half_log_snr(t), ends[0] + (ends[1] - ends[0]) * _u(6, 64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(w, 1.0 / (_density(sde, t) * (sde.T - sde.eps)), rtol=1e-7, atol=0)
    t32, w32 = sample_time(sde, 64, True, generator=torch.Generator().manual_seed(6), dtype=torch.float32)
    assert t32.dtype == w32.dtype == torch.float32
    torch.testing.assert_close(t32, t.float())
    torch.testing.assert_close(w32, w.float())


def test_importance_times_clamped_to_the_training_range():
    """An inverse of the half log-SNR that overshoots (here by 50 % about the middle) still gives
    t in [eps, T]: the draw never depends on the inverse being exact to the last bit."""
    base = ALL_SDES_T[0]

    class Overshooting(type(base)):
        def time_at_half_log_snr(self, lam):
            t = super().time_at_half_log_snr(lam)
            mid = 0.5 * (self.eps + self.T)
            return mid + 1.5 * (t - mid)

    sde = Overshooting(eps=1e-2)
    t, _ = sample_time(sde, 4000, True, generator=torch.Generator().manual_seed(0), dtype=f64)
    assert float(t.min()) == pytest.approx(sde.eps, abs=0) and float(t.max()) == pytest.approx(sde.T, abs=0)


def test_default_is_uniform_sampling():
    t, w = sample_time(ALL_SDES_T[0], 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(w, torch.ones(16)) and t.dtype == torch.float32


def test_times_follow_the_requested_device_not_the_default():
    sde = ALL_SDES_T[0]
    with foreign_default_device():
        for imp in (False, True):
            # an explicit device wins; without a device the generator's device is used
            t, w = sample_time(sde, 8, imp, device="cpu")
            assert t.device.type == w.device.type == "cpu"
            t, w = sample_time(sde, 8, imp, generator=torch.Generator().manual_seed(0))
            assert t.device.type == w.device.type == "cpu"
            t, w = sample_time(sde, 8, imp, generator=torch.Generator().manual_seed(0), device="meta")
            assert t.device.type == w.device.type == "meta"
    t, w = sample_time(sde, 8)  # neither: the default device, no error
    assert t.shape == (8,)


def _manual_loss(score_fn, sde, x0, weighting, reduction, t, noise, iw):
    """The DSM loss written from its definition, 1/2 lambda(t) |score + z / s|^2 times the weight."""
    s = sde.marginal_std(t.to(f64))
    a = sde.mean_coeff(t.to(f64))
    x_t = a[:, None] * x0.to(f64) + s[:, None] * noise.to(f64)
    r = (score_fn(x_t, t.to(f64)) + noise.to(f64) / s[:, None]).pow(2)
    r = r.mean(1) if reduction == "mean" else r.sum(1)
    lam = {"sigma2": s ** 2, "likelihood": sde.diffusion(t.to(f64)) ** 2, "none": torch.ones_like(s)}[weighting]
    return 0.5 * lam * r * iw.to(f64)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
@pytest.mark.parametrize("weighting,imp", [("sigma2", False), ("likelihood", False), ("likelihood", True), ("none", False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dsm_loss_matches_definition_on_the_same_stream(sde, weighting, imp, reduction):
    """dsm_loss draws t (sample_time) and then z from one generator; the same draws put into the
    definition give the same per-sample losses, importance weight included."""
    x0 = make_preset("ring2d").sample(32, torch.Generator().manual_seed(2))
    score_fn = lambda x, t: -0.7 * x + 0.1  # not the exact score, so the residual is not small
    got = dsm_loss(score_fn, sde, x0.to(f64), weighting, imp, reduction, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t, iw = sample_time(sde, 32, imp, g, dtype=f64)
    noise = torch.randn(x0.shape, generator=g, dtype=f64)
    if imp:
        assert not torch.allclose(iw, torch.ones_like(iw))  # so a weight applied wrongly shows
    assert got.dtype == f64 and got.shape == (32,)
    torch.testing.assert_close(got, _manual_loss(score_fn, sde, x0, weighting, reduction, t, noise, iw),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dsm_loss_follows_the_dtype_of_x0(dtype):
    """Drawn times, noise, weights and the weighting all take x0's dtype (a float32 piece would
    promote a bfloat16 loss), and given float64 times do not promote a float32 loss."""
    sde = ALL_SDES_T[0]
    x0 = make_preset("ring2d").sample(16, torch.Generator().manual_seed(2)).to(dtype)
    fn = lambda x, t: -x
    for weighting, imp in (("sigma2", False), ("likelihood", True), ("likelihood", False), ("none", False)):
        assert dsm_loss(fn, sde, x0, weighting, imp, generator=torch.Generator().manual_seed(1)).dtype == dtype
        t = torch.full((16,), 0.5, dtype=f64)
        assert dsm_loss(fn, sde, x0, weighting, t=t, noise=torch.randn_like(x0)).dtype == dtype


def test_dsm_loss_follows_the_device_of_x0():
    sde = ALL_SDES_T[0]
    x0 = make_preset("ring2d").sample(16, torch.Generator().manual_seed(2))
    t = torch.full((16,), 0.5)
    with foreign_default_device():
        for weighting, imp in (("sigma2", False), ("likelihood", True)):
            assert dsm_loss(lambda x, t: -x, sde, x0, weighting, imp).device.type == "cpu"
            assert dsm_loss(lambda x, t: -x, sde, x0, weighting, t=t).device.type == "cpu"


def test_options_checked_with_the_field_name():
    sde, x0 = ALL_SDES_T[0], torch.zeros(4, 2)
    fn = lambda x, t: -x
    with pytest.raises(ValueError, match=r"^weighting must be one of"):
        dsm_loss(fn, sde, x0, weighting="sigma")
    with pytest.raises(ValueError, match=r"^reduction must be one of"):
        dsm_loss(fn, sde, x0, reduction="avg")
    with pytest.raises(ValueError, match=r"^importance_sampling=True needs weighting='likelihood'"):
        dsm_loss(fn, sde, x0, "sigma2", importance_sampling=True)
    with pytest.raises(ValueError, match=r"^weighting must be one of"):
        DenoisingScoreMatching("sigma")
    with pytest.raises(ValueError, match=r"^reduction must be one of"):
        DenoisingScoreMatching(reduction="avg")


def test_module_defaults():
    m = DenoisingScoreMatching()
    assert (m.weighting, m.importance_sampling, m.reduction) == ("sigma2", False, "mean")
