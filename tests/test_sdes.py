"""Forward SDEs against independent computations: moment ODEs solved by scipy, the discrete
DDPM chain, the Fokker-Planck equation (autograd), and Gaussian conditioning."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import multivariate_normal

from sde_gen import VESDE, VPSDE, SubVPSDE, make_preset
from sde_gen.utils import batch_sum

from .conftest import ALL_SDES, ALL_SDES_T, DEVICES, SDE_IDS, SDE_T_IDS

f64 = torch.float64


def _scalar(fn, t):
    return float(fn(torch.tensor([t], dtype=f64))[0])


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_marginal_moments_match_moment_odes(sde):
    """dm/dt = f(t) m, dv/dt = 2 f(t) v + g(t)^2 with m(0) = 1, v(0) = 0, solved by scipy."""

    def rhs(t, y):
        f = _scalar(sde.drift_coeff, t)
        g = _scalar(sde.diffusion, t)
        return [f * y[0], 2 * f * y[1] + g * g]

    ts = np.linspace(sde.eps, sde.T, 9)
    sol = solve_ivp(rhs, (0.0, sde.T), [1.0, 0.0], t_eval=ts, rtol=1e-12, atol=1e-14, method="DOP853")
    assert sol.success
    a, s = sde.marginal_coeffs(torch.tensor(ts, dtype=f64))
    np.testing.assert_allclose(a.numpy(), sol.y[0], rtol=1e-6)
    np.testing.assert_allclose((s ** 2).numpy(), sol.y[1], rtol=1e-6)


def test_vp_marginal_is_limit_of_discrete_ddpm_chain():
    """prod_i (1 - beta(t_i) / N) -> alpha_bar(1) as N grows (Ho et al. 2020 -> Song et al. 2021)."""
    sde = VPSDE()
    exact = float(sde.mean_coeff(torch.tensor([1.0], dtype=f64))[0] ** 2)
    errors = []
    for n in (10, 100, 1000, 10000):
        t = torch.arange(1, n + 1, dtype=f64) / n
        prod = float(torch.prod(1 - sde.beta(t) / n))
        errors.append(abs(prod - exact) / exact)
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 2e-2 and errors[-1] < errors[0] / 100


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_discrete_chain_reproduces_marginals(sde):
    grid = torch.linspace(0, sde.T, 51, dtype=f64)
    betas, alpha_bars = sde.discrete_chain(grid)
    assert torch.all((betas >= 0) & (betas < 1))
    cum = torch.cumprod(1 - betas, 0)
    a2 = torch.exp(2 * sde.log_mean_coeff(grid))
    torch.testing.assert_close(cum, a2[1:] / a2[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(alpha_bars, a2)


def test_cosine_schedule_is_nichol_dhariwal_before_the_cap():
    sde = VPSDE(schedule="cosine")
    s = 0.008
    t = np.linspace(0, 0.9, 10)
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    expected = f / f[0]
    got = sde.mean_coeff(torch.tensor(t, dtype=f64)).numpy() ** 2
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # past the cap beta(t) = beta_max, so the rate stays finite and the marginal still matches
    assert float(sde.beta(torch.tensor([1.0], dtype=f64))[0]) == pytest.approx(sde.beta_max)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_cosine_variance_is_accurate_relative_to_itself_near_zero(dtype):
    """1 - alpha_bar(t) = sin(delta) sin(2 theta0 + delta) / cos^2(theta0), delta = theta(t) - theta0
    (from cos^2 a - cos^2 b = sin(b - a) sin(b + a)): a product, so accurate to relative precision
    however small t is. s(t)^2 must match it to a few ulps of its own size, and be 0 at t = 0."""
    sde = VPSDE(schedule="cosine")
    s = sde.cosine_s
    t = torch.tensor([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.5, 0.9], dtype=f64).to(dtype)
    theta0 = 0.5 * math.pi * s / (1 + s)
    delta = 0.5 * math.pi * t.to(f64) / (1 + s)
    exact = torch.sin(delta) * torch.sin(2 * theta0 + delta) / math.cos(theta0) ** 2
    got = sde.marginal_var(t)
    assert float(got[0]) == 0.0
    rtol = 64 * torch.finfo(dtype).eps
    torch.testing.assert_close(got.to(f64), exact, rtol=rtol, atol=0)


def test_ddpm_chain_has_linear_schedule_betas_for_fine_grids():
    """beta_i = 1 - exp(-int beta) over each step; the midpoint rule integrates a linear beta exactly,
    and to first order beta_i = beta(t_i) dt, the DDPM discretisation."""
    sde = VPSDE()
    n = 1000
    grid = torch.linspace(0, 1, n + 1, dtype=f64)
    betas, _ = sde.discrete_chain(grid)
    mid = 0.5 * (grid[1:] + grid[:-1])
    torch.testing.assert_close(betas, -torch.expm1(-sde.beta(mid) / n), rtol=1e-10, atol=0)
    torch.testing.assert_close(betas, sde.beta(mid) / n, rtol=2e-2, atol=0)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
@pytest.mark.statistical
def test_prior_sample_agrees_with_prior_logp(sde, stat_seed):
    g = torch.Generator().manual_seed(stat_seed(0))
    n, d = 20000, 3
    z = sde.prior_sample((n, d), generator=g, dtype=f64)
    sigma = sde.prior_std
    # logp equals an independent implementation
    ref = multivariate_normal(mean=np.zeros(d), cov=sigma ** 2 * np.eye(d)).logpdf(z[:50].numpy())
    np.testing.assert_allclose(sde.prior_logp(z[:50]).numpy(), ref, rtol=1e-12)
    # the samples have the density's moments and its entropy
    var = z.var(0)
    assert torch.allclose(var, torch.full_like(var, sigma ** 2), rtol=4 * math.sqrt(2 / n))
    nll = -sde.prior_logp(z)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * sigma ** 2)
    assert abs(float(nll.mean()) - entropy) < 4 * float(nll.std()) / math.sqrt(n)


def _fokker_planck_terms(sde, oracle, x, t):
    """d/dt log p_t, the score s, div s, and a function giving div v and v . s for a field v."""
    x = x.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    logp = oracle.log_prob(x, t, sde)
    dlogp_dt = torch.autograd.grad(logp.sum(), t, create_graph=True)[0]
    score = oracle.score(x, t, sde)

    def div(field):
        return sum(
            torch.autograd.grad(field[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(x.shape[1])
        )

    return x, t, dlogp_dt, score, div


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_drifts_satisfy_fokker_planck(sde):
    """Forward, reverse (eq. 6) and probability-flow (eq. 13) drifts transport p_t correctly.

    In log form, with s = grad log p_t and Lap p / p = div s + |s|^2:
        forward SDE  d_t log p = -div f - f.s + g^2/2 (div s + |s|^2)
        PF ODE       d_t log p = -div v - v.s                  (v = f - g^2/2 s)
        reverse SDE  d_t log p = -div r - r.s - g^2/2 (div s + |s|^2)   (r = f - g^2 s)
    """
    oracle = make_preset("ring2d")
    g = torch.Generator().manual_seed(1)
    x = 2.5 * torch.randn(16, 2, generator=g, dtype=f64)
    t = torch.linspace(0.05, 0.95, 16, dtype=f64) * sde.T
    x, t, dlogp_dt, score, div = _fokker_planck_terms(sde, oracle, x, t)
    g2 = sde.diffusion(t) ** 2
    lap_over_p = div(score) + batch_sum(score ** 2)

    f = sde.drift(x, t)
    fwd = -div(f) - batch_sum(f * score) + 0.5 * g2 * lap_over_p
    v = sde.probability_flow_drift(x, t, score)
    pf = -div(v) - batch_sum(v * score)
    r = sde.reverse_drift(x, t, score)
    rev = -div(r) - batch_sum(r * score) - 0.5 * g2 * lap_over_p
    scale = dlogp_dt.abs() + 1.0
    for name, rhs in (("forward", fwd), ("probability flow", pf), ("reverse", rev)):
        err = ((rhs - dlogp_dt).abs() / scale).max()
        assert err < 1e-8, f"{name}: relative Fokker-Planck residual {float(err):.2e}"


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_reverse_drift_accepts_score_function(sde):
    oracle = make_preset("ring2d")
    x = torch.randn(4, 2, dtype=f64)
    t = torch.full((4,), 0.3 * sde.T, dtype=f64)
    fn = oracle.score_fn(sde)
    for pf in (False, True):
        torch.testing.assert_close(sde.reverse_drift(x, t, fn, pf), sde.reverse_drift(x, t, fn(x, t), pf))


def test_ddpm_posterior_matches_closed_form_and_gaussian_conditioning():
    sde = VPSDE()
    grid = torch.linspace(0, 1, 21, dtype=f64)
    betas, abar = sde.discrete_chain(grid)
    g = torch.Generator().manual_seed(3)
    for i in (1, 5, 20):
        s_, t_ = grid[i - 1 : i].expand(3), grid[i : i + 1].expand(3)
        x0 = torch.randn(3, 2, generator=g, dtype=f64)
        xt = torch.randn(3, 2, generator=g, dtype=f64)
        mean, std = sde.posterior(xt, x0, s_, t_)
        beta, ab_t, ab_s = betas[i - 1], abar[i], abar[i - 1]
        alpha = 1 - beta
        closed_mean = (alpha.sqrt() * (1 - ab_s) * xt + ab_s.sqrt() * beta * x0) / (1 - ab_t)
        closed_var = (1 - ab_s) * beta / (1 - ab_t)
        torch.testing.assert_close(mean, closed_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(std ** 2, closed_var.expand(3), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_posterior_is_gaussian_conditioning(sde):
    """q(x_s | x_t, x_0) from conditioning the joint Gaussian (x_s, x_t) | x_0, for every SDE."""
    s = torch.tensor([0.2, 0.5, 0.7], dtype=f64) * sde.T
    t = torch.tensor([0.3, 0.9, 0.71], dtype=f64) * sde.T
    a_s, sd_s = sde.marginal_coeffs(s)
    a_t, sd_t = sde.marginal_coeffs(t)
    x0 = torch.randn(3, 4, dtype=f64)
    xt = torch.randn(3, 4, dtype=f64)
    # Cov(x_s, x_t | x_0) = a(t)/a(s) Var(x_s | x_0), from x_t = a_{t|s} x_s + independent noise
    cov = (a_t / a_s) * sd_s ** 2
    cond_mean = a_s[:, None] * x0 + (cov / sd_t ** 2)[:, None] * (xt - a_t[:, None] * x0)
    cond_var = sd_s ** 2 - cov ** 2 / sd_t ** 2
    mean, std = sde.posterior(xt, x0, s, t)
    torch.testing.assert_close(mean, cond_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(std ** 2, cond_var, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_transition_composes_to_marginal(sde):
    """a(t) = a_{t|s} a(s) and s(t)^2 = a_{t|s}^2 s(s)^2 + v_{t|s}."""
    s = torch.linspace(0.01, 0.6, 7, dtype=f64) * sde.T
    t = s + 0.3 * sde.T
    ratio, v = sde.transition_coeffs(s, t)
    a_s, sd_s = sde.marginal_coeffs(s)
    a_t, sd_t = sde.marginal_coeffs(t)
    torch.testing.assert_close(ratio * a_s, a_t, rtol=1e-12, atol=0)
    torch.testing.assert_close(ratio ** 2 * sd_s ** 2 + v, sd_t ** 2, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_half_log_snr_inverse(sde):
    t = torch.linspace(sde.eps, sde.T, 101, dtype=f64)
    lam = sde.half_log_snr(t)
    assert torch.all(lam[1:] < lam[:-1])
    torch.testing.assert_close(sde.time_at_half_log_snr(lam), t, rtol=1e-9, atol=1e-9)


def test_ve_noise_levels_are_geometric_and_consistent():
    sde = VESDE()
    sigmas, times = sde.noise_levels(10)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(9))
    torch.testing.assert_close(sde.marginal_std(times), sigmas, rtol=1e-10, atol=0)
    assert float(times[0]) == pytest.approx(sde.T) and float(times[-1]) == pytest.approx(sde.eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensors_follow_input_device_and_dtype(sde, device, dtype):
    x = torch.randn(5, 3, 4, 4, device=device, dtype=dtype)  # image-shaped
    t = torch.rand(5, device=device, dtype=dtype) * 0.9 + 0.05
    mean, std = sde.marginal(x, t)
    assert mean.shape == x.shape and std.shape == (5,)
    for out in (mean, std, sde.drift(x, t), sde.reverse_drift(x, t, -x), sde.prior_logp(x)):
        assert out.device.type == device and out.dtype == dtype
    g = torch.Generator(device=device).manual_seed(0)
    z = sde.prior_sample((2, 3), generator=g, dtype=dtype)
    assert z.device.type == device and z.dtype == dtype


def test_image_and_vector_shapes_agree(sde):
    """One code path: per-pixel results are identical for (B, D) and (B, C, H, W) inputs."""
    x = torch.randn(3, 2, 2, 2, dtype=f64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=f64)
    flat = x.flatten(1)
    torch.testing.assert_close(sde.drift(x, t).flatten(1), sde.drift(flat, t))
    torch.testing.assert_close(sde.marginal(x, t)[0].flatten(1), sde.marginal(flat, t)[0])
    torch.testing.assert_close(sde.prior_logp(x), sde.prior_logp(flat))
