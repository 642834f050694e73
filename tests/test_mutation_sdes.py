"""Checks of the SDEs written against the mutants that the older SDE tests let live
(docs/testing.md, "Mutation testing"): the low-precision wrapper applied to an SDE defined at test
time, defaults against the papers' values, T and eps reaching the base class, dtype and device
following the inputs, the probability-flow coefficients, the cosine schedule's cap, the VE noise
levels, and every constructor error naming its field."""
import math

import numpy as np
import pytest
import torch

from sde_gen import SDES, VESDE, VPSDE, SubVPSDE
from sde_gen.sdes import SDE, build_sde
from sde_gen.sdes.vp import _linear_time_at_log_alpha_bar

from ._mutation_support import foreign_default_device
from .conftest import ALL_SDES_T, SDE_T_IDS

f64 = torch.float64


def _make_linear_sde():
    """A new SDE class, defined now, so `SDE.__init_subclass__` wraps its time functions here."""

    class Quadratic(SDE):
        """f = -t x, g = 1: a(t) = exp(-t^2 / 2), s(t)^2 = int_0^t exp(-(t^2 - u^2)) du."""

        def drift_coeff(self, t):
            return -t

        def diffusion(self, t):
            return torch.ones_like(t) + 0.0 * t

        def log_mean_coeff(self, t):
            return -0.5 * t * t

        def marginal_var(self, t):
            # the awkward constants make bfloat16 arithmetic round differently from float32
            return 1.0 - torch.exp(-1.37 * t - 0.113 * t * t)

        @property
        def prior_std(self):
            return 1.0

    return Quadratic


def test_time_functions_of_a_new_sde_run_in_float32_for_low_precision():
    cls = _make_linear_sde()
    sde = cls()
    for name in ("drift_coeff", "diffusion", "log_mean_coeff", "marginal_var"):
        assert getattr(getattr(cls, name), "_at_least_float32", None) is True, name
    t = torch.linspace(0.01, 0.99, 97, dtype=torch.bfloat16)
    raw = cls.marginal_var.__wrapped__
    got = sde.marginal_var(t)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, raw(sde, t.float()).to(torch.bfloat16))
    assert not torch.equal(raw(sde, t), got)  # computing in bfloat16 would differ
    # float32 and float64 pass through untouched, in their own dtype
    for dtype in (torch.float32, f64):
        td = torch.linspace(0.01, 0.99, 97, dtype=dtype)
        out = sde.marginal_var(td)
        assert out.dtype == dtype and torch.equal(out, raw(sde, td))
    # tuples come back in the caller's dtype too
    a, s = sde.marginal_coeffs(t)
    assert a.dtype == s.dtype == torch.bfloat16


def test_abstract_and_already_wrapped_functions_are_left_alone():
    cls = _make_linear_sde()

    class Again(cls):
        marginal_var = cls.marginal_var  # already wrapped: not wrapped twice

    assert Again.marginal_var is cls.marginal_var

    class StillAbstract(SDE):
        def drift_coeff(self, t):
            return -t

    with pytest.raises(TypeError):
        StillAbstract()  # the abstract ones were not replaced by concrete wrappers


def test_defaults_are_the_papers_values():
    """Song et al. 2021: VP beta in [0.1, 20], VE sigma in [0.01, 50] (eps 1e-5), T = 1, eps 1e-3."""
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE()
    assert (vp.beta_min, vp.beta_max, vp.schedule, vp.cosine_s, vp.T, vp.eps) == (0.1, 20.0, "linear", 0.008, 1.0, 1e-3)
    assert (sub.beta_min, sub.beta_max, sub.T, sub.eps) == (0.1, 20.0, 1.0, 1e-3)
    assert (ve.sigma_min, ve.sigma_max, ve.T, ve.eps) == (0.01, 50.0, 1.0, 1e-5)


@pytest.mark.parametrize("cls", list(SDES.values()))
def test_T_and_eps_reach_the_base_class(cls):
    sde = cls(T=2.5, eps=0.02)
    assert (sde.T, sde.eps) == (2.5, 0.02)


def test_build_sde_by_name():
    assert type(build_sde("ve", sigma_max=10.0)) is VESDE and build_sde("ve", sigma_max=10.0).sigma_max == 10.0
    assert type(build_sde("subvp")) is SubVPSDE
    with pytest.raises(ValueError, match=r"^sde must be one of \['vp', 'subvp', 've', 'edm'\]; got 'vpp'$"):
        build_sde("vpp")


@pytest.mark.parametrize("make,message", [
    (lambda: VPSDE(T=0.0), r"^T must be > 0"),
    (lambda: VPSDE(eps=1.0), r"^eps must lie in the open interval \(0\.0, 1\.0\)"),
    (lambda: VESDE(sigma_min=0.0), r"^sigma_min must be > 0"),
    (lambda: VESDE(sigma_max=-1.0), r"^sigma_max must be > 0"),
    (lambda: VESDE(sigma_min=5.0, sigma_max=5.0), r"^sigma_min must be < sigma_max \(allowed: \(0, 5\.0\)\); got 5\.0$"),
    (lambda: VPSDE(beta_min=0.0), r"^beta_min must be > 0"),
    (lambda: VPSDE(beta_max=0.0), r"^beta_max must be > 0"),
    (lambda: VPSDE(beta_min=2.0, beta_max=1.0), r"^beta_max must be >= beta_min \(allowed: \[2\.0, inf\)\); got 1\.0$"),
    (lambda: VPSDE(schedule="cos"), r"^schedule must be one of \['linear', 'cosine'\]"),
    (lambda: VPSDE(cosine_s=0.0), r"^cosine_s must be > 0"),
    (lambda: VPSDE(schedule="cosine", beta_min=1e-4, beta_max=1e-3),
     r"^beta_max=0\.001 is below the cosine schedule's rate at t=0; allowed: beta_max > pi tan\(theta\(0\)\) / \(T \(1 \+ cosine_s\)\)$"),
])
def test_constructor_errors_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_constant_beta_is_allowed():
    sde = VPSDE(beta_min=1.0, beta_max=1.0)
    t = torch.tensor([0.5], dtype=f64)
    torch.testing.assert_close(sde.marginal_var(t), 1 - torch.exp(-t), rtol=1e-14, atol=0)


def test_t_min_checks():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"^t_min must lie in \(0, T\) \(allowed: \(0, T\) = \(0, 1\.0\), where marginal_std\(t_min\) > 0\); got 0$"):
        sde.check_t_min(0)
    assert sde.check_t_min(1e-9) == 1e-9


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_float32_state_with_float64_times_stays_float32(sde):
    """The coefficients are cast to x's dtype: float64 times do not promote float32 states."""
    x = torch.randn(4, 3)
    x0 = torch.randn(4, 3)
    t = torch.linspace(0.2, 0.8, 4, dtype=f64) * sde.T
    score = lambda x, t: -x
    assert sde.drift(x, t).dtype == torch.float32
    mean, std = sde.marginal(x0, t)
    assert mean.dtype == std.dtype == torch.float32
    pm, ps = sde.posterior(x, x0, 0.5 * t, t)
    assert pm.dtype == ps.dtype == torch.float32
    assert sde.reverse_drift(x, t, score).dtype == torch.float32
    assert sde.reverse_drift(x, t, score, probability_flow=True).dtype == torch.float32


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_perturb_and_probability_flow_coefficients(sde):
    x0, z = torch.randn(5, 2, dtype=f64), torch.randn(5, 2, dtype=f64)
    t = torch.linspace(0.1, 0.9, 5, dtype=f64) * sde.T
    a, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(sde.perturb(x0, t, z), a[:, None] * x0 + s[:, None] * z, rtol=1e-15, atol=1e-15)
    k1, k2 = sde.probability_flow_coeffs(t)
    torch.testing.assert_close(k1, sde.drift_coeff(t), rtol=0, atol=0)
    torch.testing.assert_close(k2, -0.5 * sde.diffusion(t) ** 2, rtol=1e-15, atol=0)
    score = lambda x, t: -x / 3.0
    torch.testing.assert_close(sde.probability_flow_drift(x0, t, score), k1[:, None] * x0 + k2[:, None] * score(x0, t),
                               rtol=1e-13, atol=1e-13)


def test_prior_sample_stream_and_device():
    sde = VESDE()
    z = sde.prior_sample((3, 2), torch.Generator().manual_seed(1), dtype=f64)
    torch.testing.assert_close(z, 50.0 * torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=f64), rtol=0, atol=0)
    with foreign_default_device():
        assert sde.prior_sample((3, 2), torch.Generator().manual_seed(1)).device.type == "cpu"
        assert sde.prior_sample((3, 2), device="cpu").device.type == "cpu"
        assert sde.prior_sample((3, 2), torch.Generator().manual_seed(1), device="meta").device.type == "meta"
        assert sde.prior_sample((3, 2)).device.type == "meta"  # neither: torch's default


def test_repr_lists_the_parameters():
    assert "sigma_min=0.01, sigma_max=50.0, T=1.0, eps=1e-05" in repr(VESDE())
    assert "beta_min=0.1, beta_max=20.0, schedule='linear', T=1.0, eps=0.001" in repr(VPSDE())
    assert "beta_min=0.1, beta_max=20.0, T=1.0, eps=0.001" in repr(SubVPSDE())


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_cosine_rate_is_continuous_at_the_cap(T):
    """beta(t) rises continuously to beta_max and stays there: the cap time is where the cosine
    rate pi tan(theta(t)) / (T (1 + s)) reaches beta_max."""
    sde = VPSDE(schedule="cosine", beta_max=20.0, T=T)
    t = torch.linspace(0, T, 200_001, dtype=f64)
    b = sde.beta(t)
    assert float(b.max()) <= 20.0 * (1 + 1e-12) and float(b[-1]) == 20.0
    assert float(b.diff().abs().max()) < 0.05  # no jump anywhere
    s = sde.cosine_s
    rate = math.pi * torch.tan(0.5 * math.pi * (t / T + s) / (1 + s)) / (T * (1 + s))
    below = rate < 20.0
    torch.testing.assert_close(b[below], rate[below], rtol=1e-12, atol=0)


def test_linear_inverse_clamps_positive_log_alpha_bar():
    """Documented: log_ab > 0 is clamped to 0, which maps to t = 0."""
    out = _linear_time_at_log_alpha_bar(torch.tensor([0.5, 0.0, -0.3], dtype=f64), 0.1, 20.0, 1.0)
    assert out[0] == 0.0 and out[1] == 0.0 and out[2] > 0


@pytest.mark.parametrize("num_levels", [1, 2, 5])
def test_ve_noise_levels(num_levels):
    """Geometric from s(T) to s(eps); times where s(t) equals each level."""
    sde = VESDE(T=2.0, eps=0.01)
    sig, times = sde.noise_levels(num_levels)
    ends = sde.marginal_std(torch.tensor([2.0, 0.01], dtype=f64))
    expected = torch.tensor(np.geomspace(float(ends[0]), float(ends[1]), num_levels) if num_levels > 1 else [float(ends[0])], dtype=f64)
    assert sig.dtype == times.dtype == f64 and sig.shape == (num_levels,)
    torch.testing.assert_close(sig, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.marginal_std(times), sig, rtol=1e-10, atol=0)
    s32, t32 = sde.noise_levels(num_levels, dtype=torch.float32)
    assert s32.dtype == t32.dtype == torch.float32
    with foreign_default_device():
        s, t = sde.noise_levels(num_levels, device="cpu")
        assert s.device.type == t.device.type == "cpu"
    with pytest.raises(ValueError, match=r"^num_levels must be an integer >= 1"):
        sde.noise_levels(0)


def test_low_precision_wrapper_keeps_higher_precision_arguments():
    """Only the float16 / bfloat16 arguments are upcast; a float64 one keeps its digits."""
    from sde_gen.sdes._numerics import _at_least_float32

    add = _at_least_float32(lambda self, a, b: a + b)
    out = add(None, torch.ones(1, dtype=torch.bfloat16), torch.full((1,), 1e-10, dtype=f64))
    assert out.dtype == f64 and float(out) == 1.0 + 1e-10


def test_t_min_is_judged_in_float64():
    """1e-46 underflows to 0 in float32, where s(t_min) would be 0; in float64 it is a valid t_min."""
    assert VPSDE().check_t_min(1e-46) == 1e-46
