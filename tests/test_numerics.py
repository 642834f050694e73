"""Numerics of the forward SDEs that do not depend on the last bit of a float.

Property tests over every SDE of the registry `sde_gen.sdes.SDES` (a new entry is picked up
automatically) plus the cosine VP schedule, x dtype (float16, bfloat16, float32, float64) x
T in {1, 2.5}, at t = 0, eps, a 200-point grid on [0, T] and T.

References: exact values where the mathematics fixes them (s(0) = 0, lambda(0) = +inf, the
inverse of +inf is 0, v_{t|t} = 0), and otherwise the same quantities in float64 at the same
(already rounded) times, with tolerances from the dtype's eps and the problem's condition
number (for the round trip t -> lambda -> t: |dt/dlambda| (1 + |lambda|), by autograd).
The last-bit tests rebuild every SDE with every libm result nudged by one or two ulps, which
is what a different CPU does, so they fail on forms such as log cos(theta(t)) - log cos(theta(0))
on any machine, not only on the one where the rounding happens to go the wrong way.
"""
import functools
import math
import types

import pytest
import torch

from sde_gen import SDE, SDES, VESDE, VPSDE, make_preset
from sde_gen.sdes import base as sde_base, ve as sde_ve, vp as sde_vp

from .conftest import DEVICES

f64 = torch.float64


def _sde_factories():
    """(id, factory(T)) for every registered SDE at its defaults, plus the cosine VP schedule."""
    out = [(name, cls) for name, cls in SDES.items()]
    out.append(("vp-cosine", functools.partial(VPSDE, schedule="cosine")))
    return out


FACTORIES = _sde_factories()
FACTORY_IDS = [name for name, _ in FACTORIES]


class _GenericVP(VPSDE):
    """The VP SDE through the base class's generic inverse (bracket + bisection) and generic
    transition kernel, which a new SDE without closed forms inherits."""

    time_at_half_log_snr = SDE.time_at_half_log_snr
    transition_coeffs = SDE.transition_coeffs


#: the registry plus the base class's generic code paths, for the inverse and the kernels
GENERIC_FACTORIES = FACTORIES + [("generic-vp", _GenericVP)]
GENERIC_IDS = [name for name, _ in GENERIC_FACTORIES]


def _dtype_supported(dtype):
    try:
        torch.expm1(torch.ones(2, dtype=dtype))
        torch.randn(2, dtype=dtype)
    except (RuntimeError, TypeError):
        return False
    return True


DTYPES = [
    pytest.param(d, id=str(d).replace("torch.", ""), marks=pytest.mark.skipif(not _dtype_supported(d), reason=f"{d} unsupported"))
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
]
LOW_PRECISION = (torch.float16, torch.bfloat16)


@pytest.fixture(params=[1.0, 2.5], ids=["T1", "T2.5"])
def T(request):
    return request.param


@pytest.fixture(params=[f for _, f in FACTORIES], ids=FACTORY_IDS)
def factory(request):
    return request.param


@pytest.fixture(params=[f for _, f in GENERIC_FACTORIES], ids=GENERIC_IDS)
def any_factory(request):
    return request.param


def _times(sde, dtype, device="cpu"):
    """t = 0, eps, a 200-point grid on [0, T] and T, rounded to `dtype`, increasing: (203,)."""
    t = torch.cat([torch.tensor([0.0, sde.eps, sde.T], dtype=f64), torch.linspace(0, sde.T, 200, dtype=f64)])
    return t.to(device=device, dtype=dtype).sort().values


def _rtol(dtype):
    """Relative accuracy owed to a result in `dtype`: its final rounding, plus the float32 (or
    float64) evaluation, whose exp has arguments up to ~45 here (a few dozen ulps)."""
    compute = torch.float32 if dtype in LOW_PRECISION else dtype
    return 2 * torch.finfo(dtype).eps + 64 * torch.finfo(compute).eps


def _assert_close_rel(got, ref, dtype, what):
    """|got - ref| <= rtol |ref| + the smallest normal number of `dtype` (subnormals lose bits)."""
    err = (got.to(f64) - ref).abs()
    bound = _rtol(dtype) * ref.abs() + torch.finfo(dtype).tiny
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), f"{what}: error {float(err[worst]):.3g} > {float(bound[worst]):.3g}"


# ---- marginals ----
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_marginal_coeffs_are_finite_nonnegative_monotone_and_accurate(factory, T, dtype, device):
    sde = factory(T=T)
    t = _times(sde, dtype, device)
    a, s = sde.marginal_coeffs(t)
    var = sde.marginal_var(t)
    for name, v in (("a", a), ("s", s), ("var", var), ("g", sde.diffusion(t)), ("f", sde.drift_coeff(t))):
        assert v.dtype == dtype and v.device == t.device, name
        assert bool(torch.isfinite(v).all()), f"{name} not finite at t={t[~torch.isfinite(v)].tolist()}"
    assert bool((s >= 0).all() and (var >= 0).all() and (sde.diffusion(t) >= 0).all())
    assert bool((s[1:] >= s[:-1]).all()), "s(t) must be non-decreasing"
    # the ends: x_0 itself at t = 0, whatever the rounding
    assert bool((var[t == 0] == 0).all() and (s[t == 0] == 0).all() and (a[t == 0] == 1).all())
    a64, s64 = sde.marginal_coeffs(t.to(f64))
    _assert_close_rel(s, s64, dtype, "s(t)")
    _assert_close_rel(a, a64, dtype, "a(t)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("event", [(2,), (1, 4, 4)], ids=["vector", "image"])
def test_marginal_is_finite_for_vectors_and_images(factory, T, dtype, event):
    sde = factory(T=T)
    t = _times(sde, dtype)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((t.shape[0],) + event, generator=g, dtype=f64)
    mean, std = sde.marginal(x0.to(dtype), t)
    assert mean.shape == x0.shape and std.shape == t.shape and mean.dtype == std.dtype == dtype
    assert bool(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std >= 0).all())
    mean64, _ = sde.marginal(x0.to(dtype).to(f64), t.to(f64))
    scale = x0.to(dtype).to(f64).abs()
    err = (mean.to(f64) - mean64).abs()
    assert bool((err <= _rtol(dtype) * scale + torch.finfo(dtype).tiny).all())
    noisy = sde.perturb(x0.to(dtype), t, torch.randn(x0.shape, generator=g, dtype=f64).to(dtype))
    assert bool(torch.isfinite(noisy).all())


# ---- half log-SNR and its inverse ----
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_log_snr_round_trip(any_factory, T, dtype):
    """lambda is +inf (not NaN) at t = 0, finite after, non-increasing, and inverted to the
    accuracy the dtype allows: |dt| <= 4 eps (|dt/dlambda| (1 + |lambda|) + t)."""
    sde = any_factory(T=T)
    t = _times(sde, dtype)
    lam = sde.half_log_snr(t)
    assert lam.dtype == dtype
    zero = t == 0
    assert bool((lam[zero] == math.inf).all())
    assert bool(torch.isfinite(lam[~zero]).all())
    assert bool((lam[1:] <= lam[:-1]).all())
    back = sde.time_at_half_log_snr(lam)
    assert back.dtype == dtype
    assert bool((back[zero] == 0).all() and (back >= 0).all())
    # the condition number of the inverse, in float64 by autograd
    t64 = t[~zero].to(f64).requires_grad_(True)
    lam64 = sde.half_log_snr(t64)
    (dlam_dt,) = torch.autograd.grad(lam64.sum(), t64)
    t64, lam64 = t64.detach(), lam64.detach()
    tol = 4 * torch.finfo(dtype).eps * ((1 + lam64.abs()) / dlam_dt.abs() + t64)
    err = (back[~zero].to(f64) - t64).abs()
    worst = int(torch.argmax(err / tol))
    assert bool((err <= tol).all()), f"t={float(t64[worst]):.4g}: round trip error {float(err[worst]):.3g} > {float(tol[worst]):.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_time_at_half_log_snr_is_total(any_factory, T, dtype):
    """Every lambda in [-inf, +inf] has a time, never NaN: +inf -> 0 exactly, [lambda(T), +inf)
    -> [0, T], below lambda(T) the schedule continued past T (smooth through T, as adaptive ODE
    solvers that overshoot the span need), -inf -> +inf; non-increasing throughout."""
    sde = any_factory(T=T)
    fi = torch.finfo(dtype)
    ends = torch.tensor([sde.eps, sde.T], dtype=dtype)
    lam_eps, lam_T = sde.half_log_snr(ends).tolist()
    lam = torch.tensor([fi.max, 1e3, lam_eps, 0.0, lam_T, lam_T - 1, -1e3, fi.min], dtype=f64)
    lam = torch.cat([lam.clamp(fi.min, fi.max).sort(descending=True).values, torch.tensor([-math.inf], dtype=f64)])
    lam = torch.cat([torch.tensor([math.inf], dtype=f64), lam]).to(dtype)
    t = sde.time_at_half_log_snr(lam)
    assert t.dtype == dtype and not bool(torch.isnan(t).any())
    assert bool((t[1:] >= t[:-1]).all()), "the inverse must be non-increasing in lambda"
    assert float(t[0]) == 0.0 and float(t[-1]) == math.inf
    inside = lam >= lam_T
    assert bool(((t[inside] >= 0) & (t[inside] <= sde.T * (1 + 4 * torch.finfo(dtype).eps))).all())
    assert bool((t[~inside] >= sde.T).all())
    # past T it is still the inverse: lambda(t) = lam wherever t is finite
    beyond = ~inside & torch.isfinite(t) & (lam > -1e3)
    torch.testing.assert_close(sde.half_log_snr(t[beyond].to(f64)), lam[beyond].to(f64), rtol=8 * torch.finfo(dtype).eps, atol=0)


# ---- transition kernels ----
@pytest.mark.parametrize("dtype", DTYPES)
def test_transition_variances_are_nonnegative_and_clamped_backwards(any_factory, T, dtype):
    """v_{t|s} >= 0 for s < t (accurate to the variance's scale), 0 at s = t, and for s > t
    the documented clamp: v = 0 with a_{t|s} = a(t) / a(s) unchanged."""
    sde = any_factory(T=T)
    grid = _times(sde, dtype)
    # every pair of a third of the grid, and every pair of neighbours (the closest s < t)
    n = grid.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    keep = ((i % 3 == 0) & (j % 3 == 0)) | (j == i + 1)
    i, j = i[keep], j[keep]
    s, t = grid[i], grid[j]
    forward = s < t  # the rounded grid may repeat a time
    ratio, v = sde.transition_coeffs(s, t)
    assert ratio.dtype == v.dtype == dtype
    assert bool(torch.isfinite(ratio).all() and torch.isfinite(v).all() and (v >= 0).all())
    ratio64, v64 = sde.transition_coeffs(s.to(f64), t.to(f64))
    var_t = sde.marginal_var(t.to(f64))
    err = (v.to(f64) - v64).abs()[forward]
    assert bool((err <= _rtol(dtype) * var_t[forward] + torch.finfo(dtype).tiny).all())
    _assert_close_rel(ratio, ratio64, dtype, "a_{t|s}")
    # s = t: the identity kernel, exactly
    same_ratio, same_v = sde.transition_coeffs(grid, grid)
    assert bool((same_ratio == 1).all() and (same_v == 0).all())
    # s > t: clamped, not refused, not negative, not NaN
    back_ratio, back_v = sde.transition_coeffs(t, s)
    assert bool((back_v[forward] == 0).all())
    a = sde.mean_coeff(grid.to(f64))
    ref = a[i] / a[j]
    fits = ref <= torch.finfo(dtype).max  # 1 / a(T) overflows float16 for VP at T = 2.5
    _assert_close_rel(back_ratio[fits], ref[fits], dtype, "a_{s|t} for s > t")


# ---- the prior ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("event", [(2,), (1, 4, 4)], ids=["vector", "image"])
def test_prior_sample_agrees_with_prior_logp_in_every_dtype(factory, T, dtype, event):
    sde = factory(T=T)
    n = 4000
    z = sde.prior_sample((n,) + event, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert z.dtype == dtype and bool(torch.isfinite(z).all())
    sigma2 = sde.prior_std ** 2
    var = float(z.to(f64).var())
    assert abs(var / sigma2 - 1) < 5 * math.sqrt(2 / z.numel()) + 2 * torch.finfo(dtype).eps
    logp = sde.prior_logp(z)
    assert logp.dtype == dtype and logp.shape == (n,) and bool(torch.isfinite(logp).all())
    # the same density in float64, to the dtype's accuracy on each of its two terms
    zd = z.to(f64)
    d = zd[0].numel()
    quad = 0.5 * zd.flatten(1).pow(2).sum(1) / sigma2
    norm = 0.5 * d * math.log(2 * math.pi * sigma2)
    ref = -quad - norm
    assert bool(((logp.to(f64) - ref).abs() <= 4 * torch.finfo(dtype).eps * (quad + abs(norm))).all())
    # and the samples have the density's entropy
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * sigma2)
    nll = -logp.to(f64)
    assert abs(float(nll.mean()) - entropy) < 5 * float(nll.std()) / math.sqrt(n) + 4 * torch.finfo(dtype).eps * entropy


# ---- the cosine schedule at t = 0 and the last bit of libm ----
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_vp_is_exact_at_zero(T, dtype):
    sde = VPSDE(schedule="cosine", T=T)
    t = torch.zeros(3, dtype=dtype)
    assert bool((sde.marginal_var(t) == 0).all() and (sde.marginal_std(t) == 0).all())
    assert bool((sde.log_mean_coeff(t) == 0).all() and (sde.mean_coeff(t) == 1).all())
    assert bool((sde.half_log_snr(t) == math.inf).all())
    assert bool((sde.time_at_half_log_snr(torch.full_like(t, math.inf)) == 0).all())


class _NudgedMath(types.ModuleType):
    """`math` whose transcendental functions answer `steps` ulps off: another CPU's libm."""

    NUDGED = {"cos", "sin", "tan", "acos", "asin", "atan", "atan2", "log", "log1p", "exp", "expm1", "sqrt"}

    def __init__(self, steps):
        super().__init__("math")
        self.steps = steps

    def __getattr__(self, name):
        fn = getattr(math, name)
        if name not in self.NUDGED:
            return fn
        toward = math.copysign(math.inf, self.steps)

        def nudged(*args):
            y = fn(*args)
            for _ in range(abs(self.steps)):
                y = math.nextafter(y, toward)
            return y

        return nudged


def _check_exact_ends(sde):
    t = _times(sde, f64)
    var, s = sde.marginal_var(t), sde.marginal_std(t)
    assert float(var[0]) == 0.0 and float(s[0]) == 0.0 and float(sde.mean_coeff(t[:1])[0]) == 1.0
    assert bool(torch.isfinite(s).all() and (var >= 0).all() and (s[1:] >= s[:-1]).all())
    lam = sde.half_log_snr(t)
    assert bool((lam[t == 0] == math.inf).all() and torch.isfinite(lam[t > 0]).all())
    assert float(sde.time_at_half_log_snr(lam[:1])[0]) == 0.0


@pytest.mark.parametrize("steps", [-2, -1, 1, 2])
def test_ends_do_not_depend_on_the_last_bit_of_libm(factory, T, steps, monkeypatch):
    """The SDE's Python-side constants computed by a libm that rounds differently (one or two
    ulps either way) must not move s(0) off 0: on the old cosine form one direction gives
    log alpha_bar(0) > 0 and a NaN std on every machine."""
    for module in (sde_base, sde_vp, sde_ve):  # every module of sde_gen.sdes that uses math
        monkeypatch.setattr(module, "math", _NudgedMath(steps))
    _check_exact_ends(factory(T=T))


@pytest.mark.parametrize("ulps", [-1, 1])
def test_cosine_ends_do_not_depend_on_theta0_rounding(T, ulps):
    sde = VPSDE(schedule="cosine", T=T)
    sde._theta0 = math.nextafter(sde._theta0, math.copysign(math.inf, ulps))
    _check_exact_ends(sde)


# ---- the exact score near t = 0 ----
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_oracle_score_is_finite_near_zero(factory, T, dtype):
    sde = factory(T=T)
    oracle = make_preset("ring2d")
    g = torch.Generator().manual_seed(0)
    x = torch.cat([oracle.sample(64, generator=g, dtype=dtype), 3 * torch.randn(64, 2, generator=g, dtype=dtype)])
    for t in (0.0, sde.eps):
        score = oracle.score(x, t, sde)
        logp = oracle.log_prob(x, t, sde)
        assert bool(torch.isfinite(score).all() and torch.isfinite(logp).all()), f"t={t}"


# ---- a new SDE gets the low-precision evaluation without asking ----
class _TextbookVE(VESDE):
    """VE with s(t)^2 written as sigma(t)^2 - sigma_min^2 via exp: exp(2 log(sigma_max / sigma_min))
    = 2.5e7 overflows float16 although s(t)^2 <= 2500 fits."""

    def marginal_var(self, t):
        return self.sigma_min ** 2 * (torch.exp(2 * self._log_ratio * t / self.T) - 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_subclass_overrides_are_evaluated_in_at_least_float32(dtype):
    sde = _TextbookVE()
    t = _times(sde, dtype)
    var = sde.marginal_var(t)
    assert var.dtype == dtype and bool(torch.isfinite(var).all())
    ref = sde.marginal_var(t.to(f64))
    # allowed: the final rounding, and the textbook form's own float32 cancellation near t = 0
    atol = sde.sigma_min ** 2 * 64 * torch.finfo(torch.float32).eps + torch.finfo(dtype).tiny
    assert bool(((var.to(f64) - ref).abs() <= 2 * torch.finfo(dtype).eps * ref + atol).all())
    # float32 and float64 still follow t's dtype
    for d in (torch.float32, f64):
        assert sde.marginal_var(t.to(d)).dtype == d


@pytest.mark.parametrize("make", [*(lambda c=c: c(T=2.5) for c in SDES.values()), lambda: VPSDE(schedule="cosine", T=2.5)])
def test_check_t_min_accepts_the_open_range_and_refuses_its_ends(make):
    """One check serves grids and likelihood: (0, T) with s(t_min) > 0, both ends refused."""
    sde = make()
    assert sde.check_t_min() == sde.eps and sde.check_t_min(0.5 * sde.T) == 0.5 * sde.T
    for bad in (0.0, -1e-3, sde.T, 2 * sde.T, 5e-324, True, "0.1"):
        with pytest.raises(ValueError, match="t_min must lie in"):
            sde.check_t_min(bad)
