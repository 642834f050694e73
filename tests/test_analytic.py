"""Extended Analytic-DPM (Bao et al. 2022b) and the Gamma cache. The per-dimension reverse variance fitted
from the model's residual, checked on Gaussian data with a diagonal, non-isotropic covariance, where
every quantity has a closed form computed here independently of the library (Gaussian conditioning per
dimension): the variance equals the exact diagonal optimum, the exact expected ELBO with it is above the
scalar analytic variance's, and the samplers with it are exact in law at few steps. The cache: a second
estimate with the same inputs evaluates nothing; any changed input (weights, grid, data, draws, SDE)
recomputes."""
import math

import pytest
import torch

from sde_gen import VESDE, VPSDE, GaussianMixture, elbo, estimate_gamma, estimate_residual
from sde_gen.analytic import GammaTable, analytic_variance, extended_variance
from sde_gen.samplers.grids import time_grid

f64 = torch.float64
MEAN = torch.tensor([0.5, -0.3, 0.0, 1.0], dtype=f64)
VAR = torch.tensor([0.02, 0.1, 0.5, 2.0], dtype=f64)  # diagonal, far from isotropic
ORACLE = GaussianMixture.gaussian(MEAN, VAR)


def coeffs(sde, t):
    a, s = sde.marginal_coeffs(torch.tensor([float(t)], dtype=f64))
    return float(a), float(s)


def step_terms(sde, t, u):
    """(lambda^2, c_0) of q(x_u | x_t, x_0) from a and s alone (u = 0: the decoder)."""
    a_t, s_t = coeffs(sde, t)
    a_u, s_u = coeffs(sde, u) if u > 0 else (1.0, 0.0)
    v = s_t ** 2 - (a_t / a_u) ** 2 * s_u ** 2
    return v * s_u ** 2 / s_t ** 2, a_u * v / s_t ** 2


def posterior_var(sde, t):
    """(D,) Var[x_{0,i} | x_t] of the diagonal Gaussian: V - V a (a^2 V + s^2)^-1 a V per dimension."""
    a, s = coeffs(sde, t)
    return VAR - VAR * a * a * VAR / (a * a * VAR + s * s)


def exact_residual(sde):
    """R_t = (a / s)^2 Var[x_0 | x_t] per dimension, (N,) times -> (N, D)."""
    def residual(t):
        rows = []
        for tv in t.tolist():
            a, s = coeffs(sde, tv)
            rows.append((a / s) ** 2 * posterior_var(sde, tv))
        return torch.stack(rows)
    return residual


def exact_gamma(sde):
    """Gamma_t = E||score||^2 / D = mean_i 1 / (a^2 V_i + s^2)."""
    def gamma(t):
        a, s = sde.marginal_coeffs(t)
        return (1.0 / (a[:, None] ** 2 * VAR + s[:, None] ** 2)).mean(1)
    return gamma


def sq_error(sde, t, x):
    """(B, D) E_z (x_0 - E[x_0 | x_t])^2 for each data point x_0 (rows of x), exact denoiser."""
    a, s = coeffs(sde, t)
    A = a * VAR / (a * a * VAR + s * s)
    b = MEAN - A * a * MEAN
    return ((1 - A * a) * x - b) ** 2 + A ** 2 * s ** 2


def exact_elbo(sde, x, K, sig2_of):
    """(B,) the ELBO's expectation over the chain for each x_0 (rows of x), with per-dimension reverse
    variances sig2_of(t, u) -> (D,) (u = 0: the decoder)."""
    ts = time_grid(sde, K).flip(0).tolist()
    a_T, s_T = coeffs(sde, ts[-1])
    p2 = sde.prior_std ** 2
    total = (0.5 * (s_T ** 2 / p2 + a_T ** 2 * x ** 2 / p2 - 1 + math.log(p2 / s_T ** 2))).sum(1)
    for k in range(K):
        lam2, c0 = step_terms(sde, ts[k + 1], ts[k])
        sig2 = sig2_of(ts[k + 1], ts[k])
        r = lam2 / sig2
        total = total + (0.5 * (r - 1 - torch.log(r))).sum() + (c0 ** 2 * sq_error(sde, ts[k + 1], x) / (2 * sig2)).sum(1)
    sig2 = sig2_of(ts[0], 0.0)
    return -(total + (0.5 * torch.log(2 * math.pi * sig2)).sum() + (sq_error(sde, ts[0], x) / (2 * sig2)).sum(1))


def optimum(sde, t, u):
    """The exact diagonal optimum lambda^2 + c_0^2 Var[x_0 | x_t] per dimension."""
    lam2, c0 = step_terms(sde, t, u)
    return lam2 + c0 ** 2 * posterior_var(sde, t)


def scalar_optimum(sde, t, u):
    lam2, c0 = step_terms(sde, t, u)
    return (lam2 + c0 ** 2 * posterior_var(sde, t).mean()).expand(4)


@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(schedule="cosine"), VESDE()], ids=["vp", "vp-cos", "ve"])
def test_extended_variance_is_the_exact_diagonal_optimum_and_the_scalar_one_its_average(sde):
    ts = time_grid(sde, 8).flip(0)
    t_all = torch.cat([ts[1:], ts[:1]])
    u_all = torch.cat([ts[:-1], torch.zeros(1, dtype=f64)])
    got = extended_variance(sde, t_all, u_all, exact_residual(sde)(t_all))
    scalar = analytic_variance(sde, t_all, u_all, exact_gamma(sde)(t_all))
    assert got.shape == (9, 4)
    for k in range(9):
        want = optimum(sde, float(t_all[k]), float(u_all[k]))
        assert torch.allclose(got[k], want, rtol=1e-9), (k, got[k], want)
        # Analytic-DPM's scalar optimum is the average of the per-dimension optima
        assert math.isclose(float(scalar[k]), float(want.mean()), rel_tol=1e-6)  # 1 - s^2 Gamma cancels at t_min
        # each dimension's expected ELBO term, as a function of its variance, peaks at the optimum
        lam2, c0 = step_terms(sde, float(t_all[k]), float(u_all[k]))
        pv = posterior_var(sde, float(t_all[k]))
        for i in range(4):
            def term(s2, i=i):
                r = lam2 / s2 if lam2 > 0 else 0.0
                return -(0.5 * (r - 1 - math.log(r)) if lam2 > 0 else 0.5 * math.log(2 * math.pi * s2)) \
                    - c0 ** 2 * float(pv[i]) / (2 * s2)
            s_opt = float(got[k, i])
            assert term(s_opt) >= max(term(s_opt * math.exp(e)) for e in (-0.2, -0.01, 0.01, 0.2))
    # the scalar variance is strictly worse on this non-isotropic law: the exact expected ELBO
    x = ORACLE.sample(256, torch.Generator().manual_seed(0), dtype=f64)
    ext = exact_elbo(sde, x, 8, lambda t, u: optimum(sde, t, u)).mean()
    sca = exact_elbo(sde, x, 8, lambda t, u: scalar_optimum(sde, t, u)).mean()
    assert ext > sca + 0.05, (float(ext), float(sca))


def test_extended_variance_is_never_below_lambda_squared():
    sde = VPSDE()
    t, u = torch.tensor([1e-3, 0.5, 1.0], dtype=f64), torch.tensor([0.0, 0.4, 0.9], dtype=f64)
    r = torch.tensor([[-1e-18, 0.0], [0.3, 2.0], [1.0, 1e-300]], dtype=f64)  # a rounding error below 0 too
    got = extended_variance(sde, t, u, r)
    for k in range(3):
        lam2, c0 = step_terms(sde, float(t[k]), float(u[k]))
        a, s = coeffs(sde, float(t[k]))
        assert (got[k] >= lam2).all() and torch.isfinite(got[k]).all()
        want = lam2 + c0 ** 2 * (s / a) ** 2 * r[k].clamp_min(0)
        assert torch.allclose(got[k], want, rtol=1e-12)


@pytest.mark.statistical
def test_estimate_residual_agrees_with_the_closed_form(stat_seed):
    sde = VPSDE()
    data = ORACLE.sample(4000, torch.Generator().manual_seed(stat_seed(51)), dtype=f64)
    ts = time_grid(sde, 5)
    table = estimate_residual(ORACLE.score_fn(sde), sde, data, ts, num_repeats=2,
                              generator=torch.Generator().manual_seed(stat_seed(52)))
    assert isinstance(table, GammaTable) and table.gamma.shape == (6, 4)
    exact = exact_residual(sde)(table.t)
    # (z + s score)^2 is a scaled chi-square(1) per dimension: relative sd sqrt(2 / 8000) = 1.6 %
    assert torch.allclose(table.gamma, exact, rtol=0.08), (table.gamma, exact)
    assert torch.equal(table(table.t), table.gamma)
    mid = torch.sqrt(table.t[1:] * table.t[:-1])
    assert table(mid).shape == (5, 4)
    assert ((table(mid) - table.gamma[:-1]) * (table(mid) - table.gamma[1:]) <= 0).all()


@pytest.mark.statistical
def test_elbo_with_the_extended_variance_matches_the_closed_form_and_beats_the_scalar_one(stat_seed):
    sde, K, n = VPSDE(), 6, 3000
    x = ORACLE.sample(n, torch.Generator().manual_seed(stat_seed(53)), dtype=f64)
    data = ORACLE.sample(4000, torch.Generator().manual_seed(stat_seed(54)), dtype=f64)
    grid = time_grid(sde, K)
    score = ORACLE.score_fn(sde)
    residual = estimate_residual(score, sde, data, grid, generator=torch.Generator().manual_seed(stat_seed(55)))
    gamma = estimate_gamma(score, sde, data, grid, generator=torch.Generator().manual_seed(stat_seed(55)))
    runs = {}
    for variance in ("analytic", "analytic_extended"):
        runs[variance] = elbo(sde, score, x, K, variance=variance, gamma=gamma, residual=residual,
                              generator=torch.Generator().manual_seed(stat_seed(56)))
    ext, sca = runs["analytic_extended"], runs["analytic"]
    assert ext.elbo.shape == (n,) and ext.variance == "analytic_extended"
    assert torch.allclose(ext.elbo, -(ext.prior_term + ext.diffusion_term + ext.decoder_term))
    # against the exact expectation per data point (the fitted residual is within ~2 % of the truth)
    want = exact_elbo(sde, x, K, lambda t, u: optimum(sde, t, u))
    diff = ext.elbo - want
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(n) + 0.01, float(diff.mean())
    # paired (same draws): the per-dimension variance is better by many standard errors
    gain = ext.elbo - sca.elbo
    assert float(gain.mean()) > 10 * float(gain.std()) / math.sqrt(n) > 0, (float(gain.mean()), float(gain.std()))
    exact_gain = (want - exact_elbo(sde, x, K, lambda t, u: scalar_optimum(sde, t, u))).mean()
    assert abs(float(gain.mean() - exact_gain)) < 0.1 * float(exact_gain) + 5 * float(gain.std()) / math.sqrt(n)


@pytest.mark.statistical
@pytest.mark.parametrize("name, opts", [("ancestral", {}), ("ddim", {"eta": 0.5})], ids=["ancestral", "ddim-eta0.5"])
def test_extended_samplers_are_exact_in_law_per_dimension_at_few_steps(name, opts, stat_seed):
    """For diagonal Gaussian data the per-dimension optimum gives the true reverse conditionals, so
    5 steps land on p_{t_min} in every dimension; the scalar analytic variance does not (too wide in
    the narrow dimension, too narrow in the wide one)."""
    from sde_gen import sample

    sde, n = VPSDE(), 50_000
    a, s = coeffs(sde, sde.eps)
    target_var = a * a * VAR + s * s
    x_T = sde.prior_sample((n, 4), torch.Generator().manual_seed(stat_seed(61)), dtype=f64)

    def run(**kw):
        return sample(sde, ORACLE.score_fn(sde), x_T=x_T, sampler=name, nfe=5, denoise=False,
                      generator=torch.Generator().manual_seed(stat_seed(62)), **opts, **kw).samples

    ext = run(variance="analytic_extended", residual=exact_residual(sde))
    assert (abs(ext.mean(0) - a * MEAN) < 5 * torch.sqrt(target_var / n)).all()
    assert (abs(ext.var(0) / target_var - 1) < 5 * math.sqrt(2 / n)).all(), ext.var(0) / target_var
    sca = run(variance="analytic", gamma=exact_gamma(sde))
    ratio = sca.var(0) / target_var
    assert ratio[0] > 1 + 20 * math.sqrt(2 / n) and ratio[3] < 1 - 20 * math.sqrt(2 / n), ratio


def test_extended_variance_needs_a_residual_of_the_data_shape():
    from sde_gen.samplers import build_sampler

    sde = VPSDE()
    x = torch.zeros(3, 4, dtype=f64)
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    with pytest.raises(ValueError, match="residual"):
        build_sampler("ancestral", variance="analytic_extended")
    with pytest.raises(ValueError, match="residual"):
        build_sampler("ddim", eta=0.5, variance="analytic_extended")
    with pytest.raises(ValueError, match="eta"):
        build_sampler("ddim", eta=0.0, variance="analytic_extended", residual=lambda t: t)
    with pytest.raises(ValueError, match="residual"):
        elbo(sde, score, x, 4, variance="analytic_extended")
    wrong = lambda t: torch.ones(t.shape[0], 5, dtype=f64)  # noqa: E731
    with pytest.raises(ValueError, match="residual.*event shape"):
        elbo(sde, score, x, 4, variance="analytic_extended", residual=wrong)
    from sde_gen import sample

    with pytest.raises(ValueError, match="residual.*event shape"):
        sample(sde, score, x_T=x, sampler="ancestral", nfe=4, variance="analytic_extended", residual=wrong)
    assert not calls


# ---- the Gamma / residual cache (estimate_gamma(..., cache_dir=...)) ----
class CountingNet(torch.nn.Module):
    """A small score network that records each evaluation (in a list: not a weight, not keyed)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4, dtype=f64)
        self.calls = []

    def forward(self, x, t):
        self.calls.append(x.shape[0])
        return self.lin(x) - x


def test_a_second_estimate_with_the_same_inputs_loads_the_cached_table(tmp_path):
    sde, net = VPSDE(), CountingNet()
    data = ORACLE.sample(64, torch.Generator().manual_seed(0), dtype=f64)
    grid = time_grid(sde, 6)

    def estimate(fn=estimate_gamma, model=net, **kw):
        kw = {"sde": sde, "data": data, "t_grid": grid, "generator": torch.Generator().manual_seed(1), **kw}
        before = len(net.calls)
        table = fn(model, cache_dir=tmp_path, **kw)
        return table, len(net.calls) - before

    first, n1 = estimate()
    assert n1 == 7 and len(list(tmp_path.glob("gamma_*.pt"))) == 1
    again, n2 = estimate()
    assert n2 == 0 and torch.equal(again.t, first.t) and torch.equal(again.gamma, first.gamma)
    # the table equals an uncached computation with the same draws
    plain = estimate_gamma(net, sde, data, grid, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.gamma, first.gamma)
    # the grid in any order is the same grid; a method of the module is keyed by the module
    assert estimate(t_grid=grid.flip(0))[1] == 0
    assert estimate(model=net.forward)[1] == 7 and estimate(model=net.forward)[1] == 0
    # any other input recomputes: the grid, the data, the draws, the SDE, the weights, the kind
    assert estimate(t_grid=time_grid(sde, 5))[1] == 6
    assert estimate(data=data[:32])[1] == 7
    assert estimate(generator=torch.Generator().manual_seed(2))[1] == 7
    assert estimate(sde=VPSDE(beta_max=19.0))[1] == 7
    assert estimate(num_repeats=2)[1] == 7
    res, n = estimate(fn=estimate_residual)
    assert n == 7 and res.gamma.shape == (7, 4) and estimate(fn=estimate_residual)[1] == 0
    with torch.no_grad():
        net.lin.bias += 0.1
    changed, n = estimate()
    assert n == 7 and not torch.equal(changed.gamma, first.gamma)
    assert estimate()[1] == 0


def test_the_cache_needs_a_name_for_a_score_that_is_not_a_module(tmp_path):
    sde = VPSDE()
    data = ORACLE.sample(16, torch.Generator().manual_seed(0), dtype=f64)
    calls = []

    def score(x, t):
        calls.append(1)
        return ORACLE.score(x, t, sde)

    with pytest.raises(ValueError, match="cache_key"):
        estimate_gamma(score, sde, data, time_grid(sde, 3), cache_dir=tmp_path)
    assert not calls and not list(tmp_path.iterdir())
    a = estimate_gamma(score, sde, data, time_grid(sde, 3), cache_dir=tmp_path, cache_key="oracle/1d",
                       generator=torch.Generator().manual_seed(0))
    n = len(calls)
    b = estimate_gamma(score, sde, data, time_grid(sde, 3), cache_dir=tmp_path, cache_key="oracle/1d",
                       generator=torch.Generator().manual_seed(0))
    assert n == 4 and len(calls) == n and torch.equal(a.gamma, b.gamma)
    # a table read back under another key is refused
    path = next(tmp_path.glob("gamma_*.pt"))
    assert torch.equal(GammaTable.load(str(path)).gamma, a.gamma)
    with pytest.raises(ValueError, match="other inputs"):
        GammaTable.load(str(path), key="not-this-one")
