"""The discrete-chain ELBO and Analytic-DPM's reverse variance (Ho et al. 2020, eq. 5; Bao et al. 2022),
checked against closed forms on Gaussian data, computed here independently of the library: for
x_0 ~ N(m, v0) the Tweedie mean is linear in x_t, so every expectation of the bound is a quadratic
form, and the reverse conditionals q(x_u | x_t) are Gaussian with a known variance."""
import math

import pytest
import torch

from sde_gen import EDMSDE, VESDE, VPSDE, GaussianMixture, elbo, estimate_gamma
from sde_gen.analytic import GammaTable, analytic_variance
from sde_gen.samplers.grids import time_grid

f64 = torch.float64
M0, V0 = 0.3, 0.5 ** 2  # the 1-D data law N(M0, V0)


def coeffs(sde, t):
    a, s = sde.marginal_coeffs(torch.tensor([float(t)], dtype=f64))
    return float(a), float(s)


def exact_step_terms(sde, t, u):
    """(lambda^2, c_0, beta-variance, optimal variance) of the step t -> u, from a and s only."""
    a_t, s_t = coeffs(sde, t)
    a_u, s_u = coeffs(sde, u) if u > 0 else (1.0, 0.0)
    v = s_t ** 2 - (a_t / a_u) ** 2 * s_u ** 2  # forward transition variance
    lam2, c0 = v * s_u ** 2 / s_t ** 2, a_u * v / s_t ** 2
    var_x0_given_xt = V0 * s_t ** 2 / (a_t ** 2 * V0 + s_t ** 2)  # Gaussian conditioning
    return lam2, c0, v, lam2 + c0 ** 2 * var_x0_given_xt


def expected_sq_error(sde, t, x):
    """E_z (x_0 - E[x_0 | x_t])^2 for x_t = a x_0 + s z, the exact Gaussian denoiser (per x_0 in `x`)."""
    a, s = coeffs(sde, t)
    A = a * V0 / (a ** 2 * V0 + s ** 2)
    b = M0 - A * a * M0
    return ((1 - A * a) * x - b) ** 2 + A ** 2 * s ** 2


def exact_elbo_1d(sde, x, K, variance):
    """E_q of the bound for each x_0 in x (shape (B,)), with the exact score, in closed form."""
    ts = time_grid(sde, K).flip(0).tolist()
    a_T, s_T = coeffs(sde, ts[-1])
    p2 = sde.prior_std ** 2
    total = 0.5 * (s_T ** 2 / p2 + a_T ** 2 * x ** 2 / p2 - 1 + math.log(p2 / s_T ** 2))
    for k in range(K):
        lam2, c0, beta, opt = exact_step_terms(sde, ts[k + 1], ts[k])
        sig2 = {"beta": beta, "posterior": lam2, "analytic": opt}[variance]
        total = total + 0.5 * (lam2 / sig2 - 1 - math.log(lam2 / sig2)) + c0 ** 2 * expected_sq_error(sde, ts[k + 1], x) / (2 * sig2)
    a0, s0 = coeffs(sde, ts[0])
    sig2 = (s0 / a0) ** 2 if variance != "analytic" else exact_step_terms(sde, ts[0], 0.0)[3]
    total = total + 0.5 * math.log(2 * math.pi * sig2) + expected_sq_error(sde, ts[0], x) / (2 * sig2)
    return -total


def gaussian_gamma(sde):
    """Gamma_t = E||score||^2 / d = 1 / (a^2 V0 + s^2) for 1-D Gaussian data."""
    def gamma(t):
        a, s = sde.marginal_coeffs(t)
        return 1.0 / (a ** 2 * V0 + s ** 2)
    return gamma


ORACLE = GaussianMixture.gaussian(torch.tensor([M0], dtype=f64), torch.tensor([[V0]], dtype=f64))


@pytest.mark.statistical
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), EDMSDE(T=10.0)], ids=["vp", "ve", "edm"])
@pytest.mark.parametrize("variance", ["beta", "posterior", "analytic"])
def test_elbo_matches_closed_form_on_1d_gaussian(sde, variance, stat_seed):
    points = torch.tensor([-1.0, M0, 1.2], dtype=f64)
    n = 4000
    x = points.repeat_interleave(n)[:, None]
    res = elbo(sde, ORACLE.score_fn(sde), x, num_steps=6, variance=variance, gamma=gaussian_gamma(sde),
               generator=torch.Generator().manual_seed(stat_seed(11)))
    assert res.elbo.shape == (3 * n,) and res.num_steps == 6 and res.variance == variance
    assert torch.allclose(res.elbo, -(res.prior_term + res.diffusion_term + res.decoder_term))
    assert torch.allclose(res.bits_per_dim, -res.elbo / math.log(2.0))
    exact = exact_elbo_1d(sde, points, 6, variance)
    est = res.elbo.view(3, n)
    se = est.std(1) / math.sqrt(n)
    assert ((est.mean(1) - exact).abs() <= 5 * se + 1e-9).all(), (est.mean(1), exact, se)
    # L_T has no randomness: the closed form exactly
    a_T, s_T = coeffs(sde, sde.T)
    p2 = sde.prior_std ** 2
    l_T = 0.5 * (s_T ** 2 / p2 + a_T ** 2 * points ** 2 / p2 - 1 + math.log(p2 / s_T ** 2))
    assert torch.allclose(res.prior_term.view(3, n)[:, 0], l_T, rtol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(schedule="cosine"), VESDE(), EDMSDE()], ids=["vp", "vp-cos", "ve", "edm"])
def test_analytic_variance_from_exact_gamma_is_the_closed_form_optimum_and_maximises_the_elbo(sde):
    ts = time_grid(sde, 8).flip(0)
    t, u = ts[1:], ts[:-1]
    gamma = gaussian_gamma(sde)(t)
    got = analytic_variance(sde, t, u, gamma)
    # the decoder step (u = 0) too
    got0 = analytic_variance(sde, ts[:1], torch.zeros(1, dtype=f64), gaussian_gamma(sde)(ts[:1]))
    x = ORACLE.sample(512, torch.Generator().manual_seed(3), dtype=f64)[:, 0]
    for k in range(len(t)):
        lam2, c0, beta, opt = exact_step_terms(sde, float(t[k]), float(u[k]))
        assert math.isclose(float(got[k]), opt, rel_tol=1e-9), (k, float(got[k]), opt)
        assert lam2 <= float(got[k]) <= beta * (1 + 1e-12)  # Bao et al. Thm. 2's interval, beta its top for VP-type chains
        # the exact expected ELBO term of this step as a function of sigma^2, averaged over the data
        sq = float(expected_sq_error(sde, float(t[k]), x).mean())

        def neg_term(sig2):
            return -(0.5 * (lam2 / sig2 - 1 - math.log(lam2 / sig2)) + c0 ** 2 * sq / (2 * sig2))

        scan = [opt * math.exp(e) for e in torch.linspace(-3, 3, 601).tolist()]
        values = [neg_term(s2) for s2 in scan]
        best = scan[max(range(len(scan)), key=values.__getitem__)]
        # the data sample's mean square differs from its expectation by O(1/sqrt(512)); the argmax moves with it
        assert abs(math.log(best / opt)) < 0.15, (k, best, opt)
        assert neg_term(opt) >= max(values) - 1e-3 * abs(max(values)) - 1e-9
    _, _, _, opt0 = exact_step_terms(sde, float(ts[0]), 0.0)
    assert math.isclose(float(got0[0]), opt0, rel_tol=1e-9)


def test_analytic_variance_clips_to_the_admissible_interval():
    sde = VPSDE()
    t, u = torch.tensor([0.5, 0.5], dtype=f64), torch.tensor([0.4, 0.4], dtype=f64)
    a, s = sde.marginal_coeffs(t)
    gamma = torch.tensor([10.0, -1.0], dtype=f64) / s ** 2  # s^2 Gamma = 10 (> 1) and -1 (< 0)
    got = analytic_variance(sde, t, u, gamma)
    lam2, c0, beta, _ = exact_step_terms(sde, 0.5, 0.4)
    assert math.isclose(float(got[0]), lam2, rel_tol=1e-12)  # the bracket clipped at 0
    assert math.isclose(float(got[1]), lam2 + c0 ** 2 * float(s[0] / a[0]) ** 2, rel_tol=1e-12)  # at 1
    unclipped = analytic_variance(sde, t, u, gamma, clip=False)
    assert float(unclipped[0]) < lam2 and float(unclipped[1]) > float(got[1])


def _gaps(sde, n, seed, plan):
    """(mean, standard error) of log p(x) - ELBO(x) over n data points, for each (variance, K) of `plan`."""
    x = ORACLE.sample(n, torch.Generator().manual_seed(seed), dtype=f64)
    log_p = ORACLE.log_prob(x)
    gaps = {}
    for variance, steps in plan:
        for K in steps:
            res = elbo(sde, ORACLE.score_fn(sde), x, num_steps=K, variance=variance, gamma=gaussian_gamma(sde),
                       generator=torch.Generator().manual_seed(seed + K))
            gap = log_p - res.elbo  # per sample: the spread of log p(x) over the data cancels
            gaps[variance, K] = (float(gap.mean()), float(gap.std()) / math.sqrt(n))
    return gaps


@pytest.mark.statistical
def test_elbo_with_exact_score_approaches_the_log_likelihood_as_steps_grow(stat_seed):
    gaps = _gaps(VPSDE(), 2000, stat_seed(21), (("beta", (5, 200)), ("posterior", (5, 50, 200)), ("analytic", (5, 50))))
    # the posterior variance is far too narrow at few steps (Bao et al. 2022, Table 1): gaps of
    # hundreds of nats that fall by orders of magnitude with K
    p5, p50, p200 = (gaps["posterior", K][0] for K in (5, 50, 200))
    assert p5 > 10 * p50 and p50 > 4 * p200 > 0, gaps
    # beta: a gap of ~0.2 nats at K = 5, within ~0.05 at K = 200
    (b5, se5), (b200, se200) = gaps["beta", 5], gaps["beta", 200]
    assert b5 > 4 * se5 and b5 - b200 > 2 * math.hypot(se5, se200) and abs(b200) < 0.05 + 4 * se200, gaps
    # for Gaussian data the KL-optimal Gaussian kernels are the true reverse conditionals: the bound
    # is tight at every K (up to the prior's mismatch at T, e^-10 here) and beats both fixed choices
    for K in (5, 50):
        gap, se = gaps["analytic", K]
        assert abs(gap) < 4 * se + 1e-3, gaps
    assert gaps["analytic", 5][0] < b5 - 4 * se5 and gaps["analytic", 5][0] < p5


@pytest.mark.slow
@pytest.mark.statistical
def test_elbo_with_exact_score_reaches_the_log_likelihood_at_1000_steps(stat_seed):
    gaps = _gaps(VPSDE(), 20000, stat_seed(23), (("beta", (10, 100, 1000)), ("posterior", (1000,)), ("analytic", (1000,))))
    b10, b100, b1000 = (gaps["beta", K] for K in (10, 100, 1000))
    assert b10[0] - b100[0] > 4 * math.hypot(b10[1], b100[1]) and abs(b1000[0]) < 4 * b1000[1] + 1e-3, gaps
    assert 0 < gaps["posterior", 1000][0] < 1.0, gaps
    assert abs(gaps["analytic", 1000][0]) < 4 * gaps["analytic", 1000][1] + 1e-3, gaps


@pytest.mark.statistical
def test_estimate_gamma_agrees_with_the_closed_form(stat_seed):
    sde = VPSDE()
    data = ORACLE.sample(4000, torch.Generator().manual_seed(stat_seed(31)), dtype=f64)
    ts = time_grid(sde, 5)
    table = estimate_gamma(ORACLE.score_fn(sde), sde, data, ts, num_repeats=2,
                           generator=torch.Generator().manual_seed(stat_seed(32)))
    assert isinstance(table, GammaTable) and torch.equal(table.t, torch.sort(ts).values)
    exact = gaussian_gamma(sde)(table.t)
    # ||score||^2 s^2 / (1 + ...) is a scaled chi-square(1): relative sd sqrt(2 / 8000) = 1.6 %
    assert torch.allclose(table.gamma, exact, rtol=0.08), (table.gamma, exact)
    assert torch.equal(table(table.t), table.gamma)  # exact at the stored times
    mid = torch.sqrt(table.t[1:] * table.t[:-1])
    assert ((table(mid) - table.gamma[:-1]) * (table(mid) - table.gamma[1:]) <= 0).all()  # in between


def test_elbo_rejects_bad_options_before_any_work():
    sde = VPSDE()
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    x = torch.zeros(4, 1, dtype=f64)
    with pytest.raises(ValueError, match="variance.*analytic"):
        elbo(sde, score, x, 10, variance="fixed")
    with pytest.raises(ValueError, match="gamma"):
        elbo(sde, score, x, 10, variance="analytic")
    with pytest.raises(ValueError, match="num_steps"):
        elbo(sde, score, x, 0)
    with pytest.raises(ValueError, match="grid"):
        elbo(sde, score, x, 10, grid="cosine")
    with pytest.raises(ValueError, match="t_min"):
        elbo(sde, score, x, 10, t_min=0.0)
    assert not calls


@pytest.mark.statistical
@pytest.mark.parametrize("name, opts", [("ancestral", {}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0})],
                         ids=["ancestral", "ddim-eta0.5", "ddim-eta1"])
def test_analytic_sampler_is_exact_in_law_on_gaussian_data_at_few_steps(name, opts, stat_seed):
    """For Gaussian data the KL-optimal Gaussian kernels are q(x_u | x_t) itself, so 5 steps from the
    prior give p_{t_min} = N(a M0, a^2 V0 + s^2) up to the prior's mismatch at T (e^-10); the fixed
    variances do not (beta too wide, the posterior too narrow)."""
    from sde_gen import sample

    sde, n = VPSDE(), 100_000
    a, s = coeffs(sde, sde.eps)
    target_mean, target_var = a * M0, a ** 2 * V0 + s ** 2
    x_T = sde.prior_sample((n, 1), torch.Generator().manual_seed(stat_seed(41)), dtype=f64)

    def run(**kw):
        x = sample(sde, ORACLE.score_fn(sde), x_T=x_T, sampler=name, nfe=5, denoise=False,
                   generator=torch.Generator().manual_seed(stat_seed(42)), **opts, **kw).samples[:, 0]
        return float(x.mean()), float(x.var())

    mean, var = run(variance="analytic", gamma=gaussian_gamma(sde))
    assert abs(mean - target_mean) < 5 * math.sqrt(target_var / n)
    assert abs(var / target_var - 1) < 5 * math.sqrt(2 / n)
    if name == "ancestral":
        _, var_beta = run(variance="beta")
        _, var_post = run(variance="posterior")
        assert var_beta > target_var * (1 + 10 * math.sqrt(2 / n)) and var_post < target_var * (1 - 10 * math.sqrt(2 / n))


def test_analytic_samplers_need_gamma():
    from sde_gen.samplers import build_sampler

    with pytest.raises(ValueError, match="gamma"):
        build_sampler("ancestral", variance="analytic")
    with pytest.raises(ValueError, match="eta"):
        build_sampler("ddim", eta=0.0, variance="analytic", gamma=lambda t: t)
    with pytest.raises(ValueError, match="variance"):
        build_sampler("ddim", eta=0.5, variance="beta")


@pytest.mark.statistical
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_elbo_serves_images_and_float32_like_vectors(dtype, stat_seed):
    """The same data as (B, 4) vectors and as (B, 1, 2, 2) images give the same bound (same draws);
    float32 data give a float64 bound that agrees with float64 data's within Monte Carlo error."""
    sde = VPSDE()
    oracle = GaussianMixture.gaussian(torch.zeros(4, dtype=f64), 0.3 * torch.ones(4, dtype=f64))
    x = oracle.sample(64, torch.Generator().manual_seed(stat_seed(5)), dtype=dtype)
    score = lambda x, t: oracle.score(x.flatten(1), t, sde).view_as(x)  # noqa: E731
    gamma = lambda t: 1.0 / (sde.marginal_coeffs(t)[0] ** 2 * 0.3 + sde.marginal_var(t))  # noqa: E731
    for variance in ("beta", "analytic"):
        vec = elbo(sde, score, x, 8, variance=variance, gamma=gamma, generator=torch.Generator().manual_seed(stat_seed(6)))
        img = elbo(sde, score, x.view(64, 1, 2, 2), 8, variance=variance, gamma=gamma,
                   generator=torch.Generator().manual_seed(stat_seed(6)))
        assert vec.elbo.dtype == f64 and torch.allclose(vec.elbo, img.elbo)
        # float32 draws its own noise: the same bound within Monte Carlo error of the float64 one
        ref = elbo(sde, score, x.to(f64), 8, variance=variance, gamma=gamma, generator=torch.Generator().manual_seed(stat_seed(7)))
        se = math.hypot(float(vec.elbo.std()), float(ref.elbo.std())) / math.sqrt(64)
        assert torch.isfinite(vec.elbo).all() and abs(float(vec.elbo.mean() - ref.elbo.mean())) < 5 * se


def test_gamma_and_analytic_variance_follow_the_inputs_device_not_the_default():
    # (elbo and the samplers go through time_grid -> SDE.check_t_min, which builds its probe on the
    # default device, so they are not run under the meta default here)
    from ._mutation_support import foreign_default_device

    sde = VPSDE()
    x = ORACLE.sample(8, torch.Generator().manual_seed(0), dtype=f64)
    ts = time_grid(sde, 4)
    with foreign_default_device():
        table = estimate_gamma(ORACLE.score_fn(sde), sde, x, ts, generator=torch.Generator().manual_seed(1))
        var = analytic_variance(sde, ts[:-1], ts[1:], table(ts[:-1]))
        g = table(ts)
    assert var.device.type == g.device.type == "cpu" and torch.isfinite(var).all() and (var > 0).all()
