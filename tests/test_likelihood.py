"""Probability-flow likelihood against independent truths: closed-form Gaussian and mixture
densities (oracles), closed-form prior mismatch (KL), autograd Jacobians, scipy-integrated bin
probabilities and pixel-space Gaussian densities for bits/dim."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sde_gen import VESDE, VPSDE, GaussianMixture, SubVPSDE, make_preset
from sde_gen.likelihood import (
    bits_per_dim,
    draw_probes,
    drift_and_divergence,
    evaluate_dataset,
    log_likelihood,
    score_and_divergence,
    TIME_VARIABLES,
)
from sde_gen.ode import ProbabilityFlow

from .conftest import DEVICES

SDE_FACTORIES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


@pytest.fixture(scope="module")
def gauss16():
    return make_preset("gaussian16d")


def _gaussian_kl(mean, cov, var):
    """KL(N(mean, cov) || N(0, var I)) in closed form."""
    D = mean.shape[0]
    return 0.5 * (
        torch.trace(cov) / var + mean @ mean / var - D + D * math.log(var) - torch.logdet(cov)
    )


# ---------------------------------------------------------------------------- exact densities
def _exact_logp_t(oracle, sde, x, t):
    """log p_t(x) of a single Gaussian N(m, C) in closed form: N(a m, a^2 C + s^2 I)."""
    a, s = (float(c) for c in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    cov = a ** 2 * oracle.covariance() + s ** 2 * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(a * oracle.mean(), cov).log_prob(x)


@pytest.mark.parametrize("name", list(SDE_FACTORIES))
def test_gaussian16d_exact_prior_recovers_analytic_logpdf(gauss16, name):
    """With the oracle's exact p_T as prior, logp = log N(x; a m, a^2 C + s^2 I) at t_min (float64);
    at t_min = 1e-9 that is the data density log N(x; m, C) to ~1e-8 nats."""
    sde = SDE_FACTORIES[name]()
    g = torch.Generator().manual_seed(1)
    x = gauss16.sample(48, g, dtype=torch.float64)
    res = log_likelihood(
        sde, gauss16.score_fn(sde), x, t_min=1e-9, rtol=1e-6, atol=1e-6,
        prior_logp=gauss16.perturbed(sde, sde.T).log_prob,
    )
    exact = _exact_logp_t(gauss16, sde, x, 1e-9)
    data = torch.distributions.MultivariateNormal(gauss16.mean(), gauss16.covariance()).log_prob(x)
    assert (exact - data).abs().max() < 1e-6
    D = x.shape[1]
    assert (res.logp - exact).abs().max() / D < 1e-4
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert torch.equal(res.std_error, torch.zeros_like(res.logp))


@pytest.mark.parametrize(
    "name, kwargs",
    [("vp", dict(beta_max=3.0)), ("subvp", dict(beta_max=3.0)), ("ve", dict(sigma_max=2.0))],
)
def test_standard_prior_mismatch_equals_closed_form_kl(gauss16, name, kwargs):
    """With the SDE's N(0, prior_std^2 I) prior, E_x[logp(x) - log p_eps(x)] = -KL(p_T || prior).

    The flow maps p_eps onto p_T exactly, so the mean error over x ~ p_eps is the prior mismatch,
    computed in closed form. Short-horizon SDEs make it large enough to measure against its
    Monte Carlo standard error; the default SDEs' mismatch is reported in docs/likelihood.md.
    """
    sde = SDE_FACTORIES[name](**kwargs)
    g = torch.Generator().manual_seed(2)
    x = gauss16.perturbed(sde, sde.eps).sample(1000, g, dtype=torch.float64)
    res = log_likelihood(sde, gauss16.score_fn(sde), x, rtol=1e-6, atol=1e-6)
    p_T = gauss16.perturbed(sde, sde.T)
    kl = _gaussian_kl(p_T.mean(), p_T.covariance(), sde.prior_std ** 2)
    diff = res.logp - _exact_logp_t(gauss16, sde, x, sde.eps)
    se = diff.std() / math.sqrt(len(diff))
    assert kl > 6 * se, "the mismatch must be measurable for the test to mean anything"
    assert abs(diff.mean() + kl) < 3 * se + 1e-4 * x.shape[1]


@pytest.mark.parametrize("time_variable", TIME_VARIABLES)
def test_ring2d_logdensity_matches_mixture(time_variable):
    """2-D ring of 8 Gaussians, exact score, float32, rtol = atol = 1e-5: within 1e-2 nats."""
    ring = make_preset("ring2d")
    sde = VPSDE()
    g = torch.Generator().manual_seed(3)
    x = ring.sample(256, g, dtype=torch.float32)
    res = log_likelihood(
        sde, ring.score_fn(sde), x, rtol=1e-5, atol=1e-5, prior_logp=ring.perturbed(sde, sde.T).log_prob,
        time_variable=time_variable,
    )
    exact = ring.log_prob(x.double(), sde.eps, sde)  # the ODE starts at t_min = eps
    assert res.logp.dtype == torch.float32
    assert (res.logp.double() - exact).abs().max() < 1e-2


def test_every_sde_recovers_the_ring_density(sde):
    """Property over every registered SDE (incl. cosine VP): exact p_T prior, t_min = eps, float64.

    rtol = atol = 1e-7: the cosine schedule's rate has a kink where it reaches its cap, which
    costs the adaptive solver about one digit at 1e-6.
    """
    ring = make_preset("ring2d")
    x = ring.sample(32, torch.Generator().manual_seed(15), dtype=torch.float64)
    res = log_likelihood(
        sde, ring.score_fn(sde), x, rtol=1e-7, atol=1e-7, prior_logp=ring.perturbed(sde, sde.T).log_prob
    )
    assert (res.logp - ring.log_prob(x, sde.eps, sde)).abs().max() / 2 < 1e-4


@pytest.mark.parametrize("time_variable", ["log_sigma"])
@pytest.mark.parametrize("name", list(SDE_FACTORIES))
def test_log_sigma_time_variables_recover_gaussian16d(gauss16, name, time_variable):
    """In u = log sigma, exact p_T prior: the result is the closed-form log p_eps(x) within
    1e-4 nats/dim (float64)."""
    sde = SDE_FACTORIES[name]()
    x = gauss16.sample(48, torch.Generator().manual_seed(21), dtype=torch.float64)
    res = log_likelihood(
        sde, gauss16.score_fn(sde), x, rtol=1e-6, atol=1e-6, time_variable=time_variable,
        prior_logp=gauss16.perturbed(sde, sde.T).log_prob,
    )
    exact = gauss16.log_prob(x, sde.eps, sde)
    assert (res.logp - exact).abs().max() / x.shape[1] < 1e-4
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)


@pytest.mark.parametrize("name", ["vp"])
def test_time_variables_agree_with_each_other(name):
    """The same log p_eps(x) and the same latent z = x(T) whatever the time variable (tight tolerance).

    VP only, to keep the fast tier fast: every SDE is checked against the closed form above."""
    ring = make_preset("ring2d")
    sde = SDE_FACTORIES[name]()
    x = ring.sample(16, torch.Generator().manual_seed(22), dtype=torch.float64)
    results = [
        log_likelihood(sde, ring.score_fn(sde), x, rtol=1e-6, atol=1e-6, time_variable=tv) for tv in TIME_VARIABLES
    ]
    for res in results[1:]:
        assert (res.logp - results[0].logp).abs().max() < 1e-4
        assert torch.allclose(res.z, results[0].z, rtol=1e-4, atol=1e-4)


def _augmented_flow(sde, score, time_variable="t", probes=None):
    """The likelihood's right-hand side: the shared probability flow with the divergence."""
    return ProbabilityFlow(sde, score, time_variable,
                           divergence=lambda w, t: score_and_divergence(score, w, t, probes))


@pytest.mark.parametrize("time_variable", TIME_VARIABLES)
def test_dynamics_match_chain_rule_and_finite_difference_divergence(gauss16, time_variable):
    """The ODE function in each time variable against independent computations: its drift is
    the probability-flow drift dx/dt (`SDE.probability_flow_drift`, written independently of
    `probability_flow_coeffs`) times dt/du (dlambda/dt by autograd on `half_log_snr`); its divergence
    (linear part in closed form, score by VJPs) is the trace of the central-difference Jacobian of
    its own drift."""
    sde = SubVPSDE()
    score = gauss16.score_fn(sde)
    w = gauss16.sample(3, torch.Generator().manual_seed(23), dtype=torch.float64)
    dynamics = _augmented_flow(sde, score, time_variable)
    tau = torch.tensor(0.4 if time_variable == "t" else -0.7, dtype=torch.float64)
    drift, div = dynamics(tau, (w, w.new_zeros(3)))
    if time_variable == "t":
        expected = sde.probability_flow_drift(w, tau.expand(3), score)
    else:
        t = sde.time_at_half_log_snr(-tau).detach().requires_grad_(True)
        (dlam_dt,) = torch.autograd.grad(sde.half_log_snr(t), t)
        dt_du = (-1 / dlam_dt).detach()
        expected = sde.probability_flow_drift(w, t.detach().expand(3), score) * dt_du
    assert torch.allclose(drift, expected, rtol=1e-9, atol=1e-9)
    h, D = 1e-5, w.shape[1]
    for b in range(3):
        trace = 0.0
        for i in range(D):
            e = torch.zeros_like(w[b]); e[i] = h
            up = dynamics(tau, ((w[b] + e)[None], w.new_zeros(1)))[0][0, i]
            down = dynamics(tau, ((w[b] - e)[None], w.new_zeros(1)))[0][0, i]
            trace += (up - down) / (2 * h)
        assert abs(div[b] - trace) < 1e-6 * (1 + abs(trace))
    assert dynamics.nfe == 1 + 3 * 2 * D

@pytest.mark.slow
def test_every_sde_recovers_the_64d_mixture_density(sde):
    """Fuller version: 64-D anisotropic 4-component mixture, 100 points, exact divergence.

    rtol = atol = 1e-7: the solver's error norm is an RMS over the whole batch, so the worst of
    many points needs a tighter tolerance than one point would.
    """
    mix = make_preset("mixture64d")
    x = mix.sample(100, torch.Generator().manual_seed(16), dtype=torch.float64)
    res = log_likelihood(
        sde, mix.score_fn(sde), x, rtol=1e-7, atol=1e-7, prior_logp=mix.perturbed(sde, sde.T).log_prob
    )
    assert (res.logp - mix.log_prob(x, sde.eps, sde)).abs().max() / 64 < 1e-4


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("chunk", [None, 1, 5, 16])
def test_exact_divergence_equals_jacobian_trace(gauss16, chunk):
    """The blocked batched-VJP divergence equals the trace of the full autograd Jacobian, per
    sample, for every block size (5 does not divide D = 16: a ragged last block)."""
    sde = VPSDE()
    score = gauss16.score_fn(sde)
    g = torch.Generator().manual_seed(4)
    x = gauss16.sample(3, g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
    _, div = drift_and_divergence(sde, score, x, t, vjp_chunk_size=chunk)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda xi: sde.probability_flow_drift(xi[None], t[i : i + 1], score)[0], x[i]
        )
        assert torch.allclose(div[i], torch.trace(jac), rtol=1e-10, atol=1e-10)


@pytest.mark.statistical
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_many_probes_agrees_with_exact_within_4_se(gauss16, probe, stat_seed):
    """Many probes fixed along one solve: the estimate is within 4 reported standard errors.

    4, not 3: the test makes 4 comparisons per probe and runs under 5 seeds (`make test-seeds`); at
    3 SE one of those 40 normal deviates would exceed its bound with probability ~10%, at 4 SE ~0.3%.

    A fixed grid makes the x-trajectory identical for both runs, so the difference is only the
    estimator's; its reported standard error is std over the probe integrals / sqrt(M).
    """
    sde = VPSDE()
    g = torch.Generator().manual_seed(stat_seed(5))
    x = gauss16.sample(4, g, dtype=torch.float64)
    common = dict(method="rk4", fixed_steps=20, t_min=1e-3)
    exact = log_likelihood(sde, gauss16.score_fn(sde), x, **common)
    hutch = log_likelihood(
        sde, gauss16.score_fn(sde), x, divergence="hutchinson", num_probes=256, probe=probe,
        generator=torch.Generator().manual_seed(stat_seed(6)), **common,
    )
    assert torch.allclose(hutch.z, exact.z)
    assert (hutch.std_error > 0).all()
    assert ((hutch.logp - exact.logp).abs() <= 4 * hutch.std_error).all()


@pytest.mark.statistical
def test_hutchinson_single_probe_batch_mean_is_unbiased(gauss16, stat_seed):
    """One probe per sample: the batch-mean error is within 4 standard errors of zero (4: a bound
    that holds for all the seeds of `make test-seeds` with probability > 99.9%)."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(stat_seed(7))
    x = gauss16.sample(512, g, dtype=torch.float64)
    common = dict(method="rk4", fixed_steps=10)
    exact = log_likelihood(sde, gauss16.score_fn(sde), x, **common)
    hutch = log_likelihood(
        sde, gauss16.score_fn(sde), x, divergence="hutchinson", generator=torch.Generator().manual_seed(stat_seed(8)), **common
    )
    assert torch.isnan(hutch.std_error).all()  # one probe: no per-sample spread to report
    err = hutch.logp - exact.logp
    se = err.std() / math.sqrt(len(err))
    assert se > 0
    assert abs(err.mean()) < 4 * se


def test_probes_have_identity_second_moment():
    x = torch.zeros(4000, 3, dtype=torch.float64)
    for probe in ("rademacher", "gaussian"):
        v = draw_probes(x, 2, probe, torch.Generator().manual_seed(9))
        assert v.shape == (2, 4000, 3)
        second = torch.einsum("mbi,mbj->ij", v, v) / (2 * 4000)
        assert torch.allclose(second, torch.eye(3, dtype=torch.float64), atol=0.1)
    v = draw_probes(x, 1, "rademacher", torch.Generator().manual_seed(9))
    assert set(v.unique().tolist()) == {-1.0, 1.0}


# ---------------------------------------------------------------------------- NFE and modes
class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), None),
        (dict(method="bosh3", rtol=1e-4, atol=1e-4), None),
        (dict(method="rk4", fixed_steps=7), 28),
        (dict(method="midpoint", fixed_steps=5), 10),
        (dict(method="euler", fixed_steps=9), 9),
        (dict(divergence="hutchinson", num_probes=3), None),
        (dict(time_variable="log_sigma"), None),
        (dict(time_variable="log_sigma", divergence="hutchinson", num_probes=2), None),
        (dict(time_variable="log_sigma", fixed_steps=6), 24),
    ],
)
def test_reported_nfe_equals_score_evaluations(kwargs, expected):
    ring = make_preset("ring2d")
    sde = SubVPSDE()
    score = _Counter(ring.score_fn(sde))
    x = ring.sample(16, torch.Generator().manual_seed(10), dtype=torch.float64)
    res = log_likelihood(sde, score, x, generator=torch.Generator().manual_seed(11), **kwargs)
    assert res.nfe == score.calls > 0
    if expected is not None:
        assert res.nfe == expected


def test_fixed_grid_converges_to_adaptive(gauss16):
    """The fixed-NFE mode is a real solver: rk4 on 40 steps agrees with dopri5 at tight tolerance."""
    sde = VPSDE()
    x = gauss16.sample(8, torch.Generator().manual_seed(12), dtype=torch.float64)
    ref = log_likelihood(sde, gauss16.score_fn(sde), x, rtol=1e-8, atol=1e-8)
    coarse = log_likelihood(sde, gauss16.score_fn(sde), x, fixed_steps=10)
    fine = log_likelihood(sde, gauss16.score_fn(sde), x, fixed_steps=40)
    err_c, err_f = (coarse.logp - ref.logp).abs().max(), (fine.logp - ref.logp).abs().max()
    assert err_f < err_c and err_f < 1e-2


def test_works_under_no_grad_and_returns_detached():
    """Sampling code runs under no_grad; the divergence still needs autograd inside."""
    ring = make_preset("ring2d")
    sde = VESDE()
    net = torch.nn.Linear(2, 2).double()  # parameters that require grad must not leak a graph
    score = lambda x, t: ring.score(x, t, sde) + 0.0 * net(x)  # noqa: E731
    x = ring.sample(8, torch.Generator().manual_seed(13), dtype=torch.float64)
    with torch.no_grad():
        res = log_likelihood(sde, score, x, fixed_steps=4)
    assert not res.logp.requires_grad and not res.z.requires_grad
    assert torch.isfinite(res.logp).all()


@pytest.mark.parametrize("time_variable", TIME_VARIABLES)
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_function_makes_no_host_round_trip(monkeypatch, divergence, time_variable):
    """Every way of pulling a value to the host raises inside the ODE function: none is used."""
    ring = make_preset("ring2d")
    sde = VPSDE()
    x = ring.sample(8, torch.Generator().manual_seed(17), dtype=torch.float64)
    probes = None if divergence == "exact" else draw_probes(x, 3, "rademacher", torch.Generator().manual_seed(18))
    dynamics = _augmented_flow(sde, ring.score_fn(sde), time_variable, probes)
    t = torch.tensor(0.3, dtype=torch.float64)
    delta = x.new_zeros((8,) if probes is None else (3, 8))

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the ODE function")

    for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    drift, div = dynamics(t, (x, delta))
    monkeypatch.undo()
    assert drift.shape == x.shape and div.shape == delta.shape and dynamics.nfe == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype_follow_inputs(device, dtype):
    ring = make_preset("ring2d").to(device)
    sde = VPSDE().to(device)
    x = ring.sample(8, torch.Generator(device=device).manual_seed(14), device=device, dtype=dtype)
    for kw in (dict(), dict(divergence="hutchinson", num_probes=2, generator=torch.Generator(device=device))):
        res = log_likelihood(sde, ring.score_fn(sde), x, fixed_steps=3, **kw)
        for tensor in (res.logp, res.prior_logp, res.delta_logp, res.std_error, res.z):
            assert tensor.device.type == torch.device(device).type and tensor.dtype == dtype


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(method="rk45"), "method"),
        (dict(method="rk4"), "method"),  # fixed-grid solver without fixed_steps
        (dict(fixed_steps=0), "fixed_steps"),
        (dict(fixed_steps=5, method="dopri5"), "method"),
        (dict(divergence="trace"), "divergence"),
        (dict(num_probes=0), "num_probes"),
        (dict(probe="uniform"), "probe"),
        (dict(t_min=1.0), "t_min"),
        (dict(rtol=-1.0), "rtol"),
        (dict(vjp_chunk_size=0), "vjp_chunk_size"),
        (dict(time_variable="sigma"), "time_variable"),
        (dict(time_variable="log_sigma", t_min=0.0), "t_min"),
    ],
)
def test_bad_arguments_fail_naming_the_field(kwargs, field):
    ring = make_preset("ring2d")
    sde = VPSDE()
    with pytest.raises(ValueError, match=field):
        log_likelihood(sde, ring.score_fn(sde), torch.zeros(2, 2), **kwargs)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VP", "VE"])
@pytest.mark.parametrize("t_min", [0.0, -1e-3, 5e-324], ids=["zero", "negative", "std-underflows-to-0"])
@pytest.mark.parametrize("time_variable", TIME_VARIABLES)
def test_t_min_where_the_score_divides_by_zero_is_refused(sde, t_min, time_variable):
    """At s(t_min) = 0 a score s_theta / s(t) (and Tweedie) divides by zero: t_min = 0, and the
    smallest positive double, whose marginal std underflows to exactly 0 for both SDEs, are refused
    before any evaluation, naming the allowed range."""
    assert float(sde.marginal_std(torch.tensor(5e-324, dtype=torch.float64))) == 0.0
    score = _Counter(make_preset("ring2d").score_fn(sde))
    with pytest.raises(ValueError, match=r"t_min must lie in \(0, T\)") as info:
        log_likelihood(sde, score, torch.zeros(4, 2, dtype=torch.float64), t_min=t_min, fixed_steps=2,
                       time_variable=time_variable)
    assert f"(0, {sde.T})" in str(info.value) and score.calls == 0


def test_non_finite_input_rows_are_named_before_any_solve():
    """log_likelihood names the rows (batch indices), evaluate_dataset the rows of the whole set,
    instead of failing inside torchdiffeq; the score is never called."""
    ring = make_preset("ring2d")
    sde = VPSDE()
    x = ring.sample(10, torch.Generator().manual_seed(40), dtype=torch.float64)
    x[3, 0], x[7, 1] = math.nan, -math.inf
    score = _Counter(ring.score_fn(sde))
    with pytest.raises(ValueError, match=r"x has non-finite values .* in 2 of 10 rows: \[3, 7\]"):
        log_likelihood(sde, score, x, fixed_steps=2)
    # batches of 2: rows 3 and 7 of the set are rows 1 and 1 of their batches
    with pytest.raises(ValueError, match=r"data has non-finite values .* in 2 of 10 rows: \[3, 7\]"):
        evaluate_dataset(sde, score, x, batch_size=2, fixed_steps=2)
    assert score.calls == 0


# ---------------------------------------------------------------------------- bits per dimension
class TinyImages:
    """Synthetic 8-bit images, shape (2, 3), whose pixels are a discretised Gaussian.

    v ~ N(m, diag(s^2)) in pixel units and k = clip(floor(v), 0, 255), so P(k) is a product of
    normal-CDF differences. The model space is x = scale * v + shift (any affine map).
    """

    num_bits = 8
    shape = (2, 3)

    def __init__(self, scale, shift):
        self.scale, self.shift = scale, shift
        self.model_per_pixel = scale
        self.m = torch.tensor([[110.0, 128.0, 140.0], [120.0, 100.0, 135.0]], dtype=torch.float64)
        self.s = torch.tensor([[12.0, 20.0, 30.0], [8.0, 16.0, 25.0]], dtype=torch.float64)

    def to_model(self, v):
        return self.scale * v + self.shift

    def to_pixels(self, x):
        return (x - self.shift) / self.scale

    def sample_pixels(self, n, generator):
        v = self.m + self.s * torch.randn((n,) + self.shape, generator=generator, dtype=torch.float64)
        return v.floor().clamp(0, 255).to(torch.uint8)

    def model_oracle(self):
        """The continuous density of v, carried to model space, as an oracle (flattened)."""
        return GaussianMixture.gaussian(
            self.to_model(self.m).flatten(), (self.scale * self.s).flatten() ** 2
        )

    def log_bin_probability(self, k):
        """log P(k) per image, integrating the Gaussian over each unit bin with scipy."""
        kk, m, s = k.double().numpy(), self.m.numpy(), self.s.numpy()
        lo = np.where(kk <= 0, -np.inf, (kk - m) / s)
        hi = np.where(kk >= 255, np.inf, (kk + 1 - m) / s)
        p = stats.norm.cdf(hi) - stats.norm.cdf(lo)
        return torch.from_numpy(np.log(p).reshape(len(kk), -1).sum(1))

    def expected_dequantised_nll(self, k):
        """E_u[-log p_V(k + u)] in nats per image, closed form: E(k + u - m)^2 = (k + 1/2 - m)^2 + 1/12."""
        k = k.double()
        sq = (k + 0.5 - self.m) ** 2 + 1.0 / 12
        per_dim = 0.5 * sq / self.s ** 2 + 0.5 * torch.log(2 * math.pi * self.s ** 2)
        return per_dim.flatten(1).sum(1)


class _FlatScore:
    """Oracle score on flattened images: the model acts on (B, 2, 3)."""

    def __init__(self, oracle, sde):
        self.oracle, self.sde = oracle, sde

    def __call__(self, x, t):
        return self.oracle.score(x.flatten(1), t, self.sde).reshape(x.shape)


def _flat_prior(oracle, sde):
    p_T = oracle.perturbed(sde, sde.T)
    return lambda z: p_T.log_prob(z.flatten(1))


def _bpd(data, sde, pixels, seed, **kw):
    oracle = data.model_oracle()
    return bits_per_dim(
        sde, _FlatScore(oracle, sde), pixels, data, generator=torch.Generator().manual_seed(seed),
        t_min=1e-9, rtol=1e-7, atol=1e-7, prior_logp=_flat_prior(oracle, sde), dtype=torch.float64, **kw,
    )


def test_bits_per_dim_each_draw_equals_pixel_space_density():
    """Per draw: bits/dim = -log N(k + u; m, s^2) / (D ln 2), evaluated in pixel units with scipy."""
    data = TinyImages(2.0 / 256, -1.0)
    pixels = data.sample_pixels(16, torch.Generator().manual_seed(20))
    res = _bpd(data, VPSDE(), pixels, seed=21)
    u = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    v = (pixels.double() + u).numpy()
    nll = -stats.norm.logpdf(v, data.m.numpy(), data.s.numpy()).reshape(16, -1).sum(1)
    expected = torch.from_numpy(nll) / (6 * math.log(2))
    assert (res.draws[0] - expected).abs().max() < 1e-4


def test_bits_per_dim_matches_analytic_dequantised_value_and_is_never_negative():
    data = TinyImages(2.0 / 256, -1.0)
    pixels = data.sample_pixels(12, torch.Generator().manual_seed(22))
    res = _bpd(data, SubVPSDE(), pixels, seed=23, num_dequant=8)
    D, ln2 = 6, math.log(2)
    analytic = data.expected_dequantised_nll(pixels) / (D * ln2)
    bound = -data.log_bin_probability(pixels) / (D * ln2)  # -log2 P(k) / D >= 0
    assert (res.draws > 0).all() and (res.bpd > 0).all()
    assert (analytic >= bound - 1e-12).all() and (bound >= 0).all()  # Jensen: a bound on the discrete data
    z = (res.bpd - analytic).sum() / res.std_error.pow(2).sum().sqrt()
    assert abs(z) < 3
    assert res.std_error.shape == (12,) and torch.isfinite(res.mean_std_error)


def test_bits_per_dim_is_invariant_to_affine_data_scaling():
    """[-1, 1] and [0, 1] model spaces (and an odd one) give the same bits/dim; raw nats do not."""
    pixels = TinyImages(1.0, 0.0).sample_pixels(8, torch.Generator().manual_seed(24))
    sde = VPSDE()
    results = [_bpd(TinyImages(sc, sh), sde, pixels, seed=25) for sc, sh in [(2 / 256, -1.0), (1 / 256, 0.0), (0.05, 3.0)]]
    for other in results[1:]:
        assert (other.bpd - results[0].bpd).abs().max() < 1e-4
    # the [0, 1] model density exceeds 1: its naive nats/dim would be negative
    data01 = TinyImages(1 / 256, 0.0)
    x = data01.to_model(pixels.double() + 0.5).flatten(1)
    assert (data01.model_oracle().log_prob(x) > 0).all()
    assert (results[1].bpd > 0).all()


def test_bits_per_dim_rejects_objects_without_the_map():
    with pytest.raises(ValueError, match="to_model"):
        bits_per_dim(VPSDE(), lambda x, t: x, torch.zeros(2, 3, dtype=torch.uint8), object())


# ---------------------------------------------------------------------------- data sets
def test_evaluate_dataset_batches_agree_with_one_solve(gauss16):
    """Batching changes nothing on a fixed grid; mean and standard error are the set's."""
    sde = VESDE()
    x = gauss16.sample(20, torch.Generator().manual_seed(30), dtype=torch.float64)
    whole = log_likelihood(sde, gauss16.score_fn(sde), x, fixed_steps=6)
    res = evaluate_dataset(sde, gauss16.score_fn(sde), x, batch_size=7, fixed_steps=6)
    assert res.unit == "nats" and res.dim == 16 and res.nfe == 3 * 6 * 4
    assert torch.allclose(res.values, whole.logp, rtol=0, atol=1e-10)
    assert math.isclose(res.mean, float(whole.logp.mean()), abs_tol=1e-10)
    assert math.isclose(res.std_error, float(whole.logp.std() / math.sqrt(20)), rel_tol=1e-9)


def test_evaluate_dataset_images_reports_bits_per_dim():
    data = TinyImages(2.0 / 256, -1.0)
    pixels = data.sample_pixels(10, torch.Generator().manual_seed(31))
    sde = VPSDE()
    oracle = data.model_oracle()
    res = evaluate_dataset(
        sde, _FlatScore(oracle, sde), pixels, dataset_or_map=data, batch_size=4, num_dequant=2,
        generator=torch.Generator().manual_seed(32), dtype=torch.float64, fixed_steps=8,
    )
    assert res.unit == "bits/dim" and res.values.shape == (10,) and (res.values > 0).all()
    analytic = data.expected_dequantised_nll(pixels) / (6 * math.log(2))
    # coarse fixed grid and standard prior: close to, not exactly, the analytic value
    assert abs(res.mean - float(analytic.mean())) < 0.05
