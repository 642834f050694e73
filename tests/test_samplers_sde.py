"""The stochastic samplers of issue 4 against exact scores and exact laws.

References used here are independent of the samplers' code:
* for Gaussian data every linear sampler (Euler-Maruyama, reverse diffusion, ancestral) maps a
  Gaussian to a Gaussian, so its exact output law is propagated step by step in the data covariance's
  eigenbasis (mean and variance recursions of the affine update, written here from the SDE's marginal
  a(t), s(t), f(t), g(t)); weak orders are log-log slopes of that law's error, free of sampling noise;
* Ho et al.'s eps-form DDPM mean and the NCSN chain's mean for one ancestral step;
* exact samples of p_t (Langevin invariance) and the Monte Carlo noise floor (`metrics.noise_floor`).
"""
import math

import pytest
import torch

from sde_gen import VESDE, VPSDE, make_preset
from sde_gen.metrics import bures_wasserstein, gaussian_w2_to_target, mode_weight_error, noise_floor, sliced_wasserstein
from sde_gen.samplers import SAMPLERS, LangevinCorrector, build_sampler, langevin_correct, sample, time_grid

from .conftest import ALL_SDES, SDE_IDS, grid_for

f64 = torch.float64
GAUSS = make_preset("gaussian16d")
RING = make_preset("ring2d")
Q, LAM, MU = GAUSS.eigvecs[0], GAUSS.eigvals[0], GAUSS.means[0]  # Sigma = Q diag(LAM) Q^T
VP_VE = [s for s in ALL_SDES if type(s).__name__ in ("VPSDE", "VESDE") and getattr(s, "schedule", "linear") == "linear"]
VP_VE_IDS = [type(s).__name__ for s in VP_VE]
# the same at T = 2 with a non-default eps: a dropped `/ T` in a sampler's grid or step shows here
VP_VE_T = VP_VE + [VPSDE(T=2.0, eps=1e-2), VESDE(T=2.0, eps=1e-2)]
VP_VE_T_IDS = VP_VE_IDS + ["VPSDE-T2", "VESDE-T2"]


def gaussian_score(sde):
    """The exact score of the 16-D Gaussian under `sde` in matrix form (checked against the oracle)."""

    def score(x, t):
        a, s = sde.marginal_coeffs(t)
        a, s = a.to(x.dtype)[:, None], s.to(x.dtype)[:, None]
        y = (x - a * MU.to(x.dtype)) @ Q.to(x.dtype)
        return -(y / (a ** 2 * LAM.to(x.dtype) + s ** 2)) @ Q.T.to(x.dtype)

    return score


def gaussian_floor(n, replicates=10, target=GAUSS):
    """Mean + 2 std of the Bures-Wasserstein error of n exact samples of the Gaussian `target`."""
    fl = noise_floor(lambda n, g: target.sample(n, g, dtype=f64), n, lambda x, y: gaussian_w2_to_target(x, target),
                     replicates=replicates, generator=torch.Generator().manual_seed(123))
    return fl["mean"] + 2 * fl["std"]


def gaussian_errors(sde, name, nfes, n=2000, **options):
    errs = []
    for nfe in nfes:
        res = sample(sde, gaussian_score(sde), (n, 16), sampler=name, nfe=nfe,
                     generator=torch.Generator().manual_seed(0), dtype=f64, **options)
        assert res.nfe <= nfe
        errs.append(float(gaussian_w2_to_target(res.samples, GAUSS)))
    return errs


def test_matrix_gaussian_score_is_the_oracle_score(sde):
    x = GAUSS.sample(64, torch.Generator().manual_seed(0), dtype=f64)
    t = torch.linspace(sde.eps, sde.T, 64, dtype=f64)
    torch.testing.assert_close(gaussian_score(sde)(x, t), GAUSS.score(x, t, sde))


# ---------------------------------------------------------------- exact laws of the linear samplers
def _scalars(sde, t):
    t = torch.tensor([t], dtype=f64)
    return (float(sde.mean_coeff(t)), float(sde.marginal_std(t)), float(sde.drift_coeff(t)), float(sde.diffusion(t)))


def exact_law(sde, sampler, num_steps, variance="posterior"):
    """Mean and variances (in the eigenbasis, vectors (16,)) of a linear sampler's output from exact p_T.

    Every step is x -> A x + b + sqrt(q) z with coefficients written from the marginals alone;
    the final Tweedie step at t_min is x -> (x + s^2 score) / a.
    """
    m_e = Q.T @ MU  # data mean in the eigenbasis
    ts = time_grid(sde, num_steps, grid_for(sde).get("grid", "uniform"))
    a_all, s_all = sde.marginal_coeffs(ts)
    f_all, g_all = sde.drift_coeff(ts), sde.diffusion(ts)
    mean, var = a_all[0] * m_e, a_all[0] ** 2 * LAM + s_all[0] ** 2  # the exact p_T
    for i in range(num_steps):
        a_t, s_t, f_t, g_t = a_all[i], s_all[i], f_all[i], g_all[i]
        a_s, s_s = a_all[i + 1], s_all[i + 1]
        c = a_t ** 2 * LAM + s_t ** 2  # score = -(x - a_t m) / c
        h, a_ts = ts[i] - ts[i + 1], a_t / a_s
        v = s_t ** 2 - a_ts ** 2 * s_s ** 2  # exact transition variance from t_next to t
        if sampler == "euler_maruyama":
            A, b, q = 1 - h * f_t - h * g_t ** 2 / c, h * g_t ** 2 * a_t * m_e / c, g_t ** 2 * h
        elif sampler == "reverse_diffusion":
            A, b, q = 2 - a_ts - v / c, v * a_t * m_e / c, v
        else:  # ancestral: posterior mean of x_s given x_t and Tweedie's x0 = x (1 - s^2/c) / a + s^2 m / c
            c_t, c_0 = a_ts * s_s ** 2 / s_t ** 2, a_s * v / s_t ** 2
            A, b = c_t + c_0 * (1 - s_t ** 2 / c) / a_t, c_0 * s_t ** 2 * m_e / c
            q = v * s_s ** 2 / s_t ** 2 if variance == "posterior" else v
        mean, var = A * mean + b, A ** 2 * var + q
    return tweedie_law(sde, mean, var)


def tweedie_law(sde, mean, var):
    """Push N(mean, diag(var)) at t_min through the Tweedie step with the exact score."""
    a, s = sde.marginal_coeffs(torch.tensor(sde.eps, dtype=f64))
    c = a ** 2 * LAM + s ** 2
    D = (1 - s ** 2 / c) / a
    return D * mean + s ** 2 * (Q.T @ MU) / c, D ** 2 * var


def continuous_law(sde):
    """The exact reverse SDE carries exact p_T to exact p_{t_min}; then the Tweedie step."""
    a, s = sde.marginal_coeffs(torch.tensor(sde.eps, dtype=f64))
    return tweedie_law(sde, a * (Q.T @ MU), a ** 2 * LAM + s ** 2)


def law_error(mean, var, ref_mean, ref_var):
    return float((mean - ref_mean).norm() + (var - ref_var).norm())


def slope(nfes, errs):
    lx, ly = torch.log(torch.tensor(nfes, dtype=f64)), torch.log(torch.tensor(errs, dtype=f64))
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


LINEAR = [("euler_maruyama", "posterior"), ("reverse_diffusion", "posterior"), ("ancestral", "posterior"), ("ancestral", "beta")]


@pytest.mark.parametrize("sampler, variance", LINEAR, ids=[f"{a}-{b}" for a, b in LINEAR])
def test_weak_order_one_from_exact_laws(sde, sampler, variance):
    """Error of the exact output law vs the exact reverse-SDE law (the limit of many steps) ~ C / N^p."""
    ref_mean, ref_var = continuous_law(sde)
    steps = [40, 80, 160, 320]
    errs = [law_error(*exact_law(sde, sampler, n, variance), ref_mean, ref_var) for n in steps]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
    # weak order >= 1; the VE SDE's first-order error coefficient is small (errors made at large sigma
    # are contracted by the reverse flow, those at small sigma are small), so EM there shows ~2 at these N
    assert -2.2 < slope(steps, errs) < -0.8, (slope(steps, errs), errs)
    # the limit is the target up to the t_min truncation that the Tweedie step leaves: O(s(t_min)^2)
    assert float((ref_var - LAM).abs().max()) < 1e-3 and float((ref_mean - Q.T @ MU).abs().max()) < 1e-3


@pytest.mark.statistical
@pytest.mark.parametrize("sampler, variance", LINEAR, ids=[f"{a}-{b}" for a, b in LINEAR])
@pytest.mark.parametrize("sde", VP_VE_T, ids=VP_VE_T_IDS)
def test_samplers_realise_their_exact_law(sde, sampler, variance, stat_seed):
    """The implementation's samples follow the propagated law (not just the target) within MC error.

    The bound compares with one set of n exact draws of the law (its Bures-Wasserstein error is the
    Monte Carlo floor); both errors sum ~150 squared normal deviates, so their ratio stays within
    ~1 +- 0.3, and 2x holds for every seed of `make test-seeds`."""
    n, steps = 20000, 12
    opts = {"variance": variance} if sampler == "ancestral" else {}
    mean_e, var_e = exact_law(sde, sampler, steps, variance)
    law_mean, law_cov = Q @ mean_e, Q @ torch.diag(var_e) @ Q.T
    g = torch.Generator().manual_seed(stat_seed(1))
    x_T = make_preset("gaussian16d").perturbed(sde, sde.T).sample(n, g, dtype=f64)
    res = build_sampler(sampler, nfe=steps + 1, **opts)(sde, gaussian_score(sde), x_T=x_T, generator=g)
    x = res.samples
    to_law = float(bures_wasserstein(x.mean(0), torch.cov(x.T), law_mean, law_cov))
    exact = law_mean + torch.randn(n, 16, generator=g, dtype=f64) @ torch.linalg.cholesky(law_cov).T
    floor = float(bures_wasserstein(exact.mean(0), torch.cov(exact.T), law_mean, law_cov))
    law_to_target = float(bures_wasserstein(law_mean, law_cov, GAUSS.mean(), GAUSS.covariance()))
    assert to_law < 2.0 * floor + 0.1 * law_to_target, (to_law, floor, law_to_target)


# ---------------------------------------------------------------- ancestral = DDPM posterior
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(schedule="cosine"), VESDE()], ids=["VP", "VP-cosine", "VE"])
@pytest.mark.statistical
def test_ancestral_step_is_the_ddpm_posterior(sde, variance, stat_seed):
    """One step from t to s: Ho et al. (2020) eq. 11 eps-form mean, and the NCSN chain's mean for VE."""
    n = 40000
    t, s = 0.4, 0.37
    tt, ss = torch.full((n,), t, dtype=f64), torch.full((n,), s, dtype=f64)
    x0 = RING.sample(1, torch.Generator().manual_seed(5), dtype=f64)
    x = (x0 * _scalars(sde, t)[0] + 0.3).expand(n, 2)
    score = RING.score(x[:1], tt[:1], sde)
    sampler = build_sampler("ancestral", variance=variance)
    out = sampler.step(sde, RING.score_fn(sde), x, 0, tt, ss, torch.Generator().manual_seed(stat_seed(2)), {})
    abar_t, abar_s = _scalars(sde, t)[0] ** 2, _scalars(sde, s)[0] ** 2
    if isinstance(sde, VESDE):  # sigma_t^2 - sigma_s^2 is the chain's transition variance
        sig_t, sig_s = _scalars(sde, t)[1], _scalars(sde, s)[1]
        beta = sig_t ** 2 - sig_s ** 2
        mean = x[:1] + beta * score
        post_var = sig_s ** 2 * beta / sig_t ** 2
    else:
        alpha = abar_t / abar_s
        beta = 1 - alpha
        eps = -math.sqrt(1 - abar_t) * score
        mean = (x[:1] - beta / math.sqrt(1 - abar_t) * eps) / math.sqrt(alpha)
        post_var = (1 - abar_s) / (1 - abar_t) * beta
    var = post_var if variance == "posterior" else beta
    se = math.sqrt(var / n)
    # 5 SE for the mean and rtol 0.05 (= 7 SE of a sample variance, sqrt(2 / n) = 0.7%): under the
    # 5 seeds of `make test-seeds` a false alarm has probability < 1e-4
    assert float((out.mean(0) - mean[0]).abs().max()) < 5 * se
    torch.testing.assert_close(out.var(0), torch.full((2,), var, dtype=f64), rtol=0.05, atol=0)


# ---------------------------------------------------------------- Langevin and PC
@pytest.mark.statistical
@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_langevin_leaves_p_t_invariant(sde, stat_seed):
    """From exact p_t samples, 40 corrector steps with the exact score keep p_t (batch-norm SNR rule);
    the per-sample rule's state-dependent step biases the stationary law to p_t |score|^2 (kept as an
    option only for comparison) and visibly drifts.

    Bounds, in units of the noise floor's mean (the Bures-Wasserstein error of n exact samples), from
    10 seeds of chain and floor (seed offsets 0..9 of the stat_seed protocol): after/floor was
    0.98-1.14 (VP, sub-VP) and 0.93-1.15 (VE), mean 1.05, sd <= 0.08, so 1.4 is mean + 4 sd;
    biased/floor was 3.61-4.0 (VP, sub-VP) and 2.57-2.87 (VE), mean 2.72, sd 0.09, so 2.2 is the VE
    mean - 5 sd. (The old bound, biased > 2.5 x (mean + 2 sd), held at 2.5048 for seed 0 only.)
    """
    n, t = 4000, 0.3
    pt = GAUSS.perturbed(sde, t)
    g = torch.Generator().manual_seed(stat_seed(0))
    x = pt.sample(n, g, dtype=f64)
    tt = torch.full((n,), t, dtype=f64)
    bw = lambda z: float(bures_wasserstein(z.mean(0), torch.cov(z.T), pt.mean(), pt.covariance()))
    start = bw(x)
    ones = torch.ones(n, dtype=f64)
    after = bw(langevin_correct(gaussian_score(sde), x, tt, ones, 0.16, 40, g))
    biased = bw(langevin_correct(gaussian_score(sde), x, tt, ones, 0.16, 40, g, norm="sample"))
    floor = noise_floor(lambda m, gen: pt.sample(m, gen, dtype=f64), n, lambda a, b: gaussian_w2_to_target(a, pt),
                        replicates=10, generator=torch.Generator().manual_seed(stat_seed(123)))["mean"]
    assert after < 1.4 * floor and biased > 2.2 * floor, (start, after, biased, floor)


@pytest.mark.parametrize("sde", VP_VE, ids=VP_VE_IDS)
def test_pc_beats_its_predictor_alone_at_equal_steps(sde):
    steps = 30
    pc = gaussian_errors(sde, "pc", [2 * steps + 1])[0]
    alone = gaussian_errors(sde, "reverse_diffusion", [steps + 1])[0]
    assert pc < 0.8 * alone, (pc, alone)


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral", "euler_maruyama"])
def test_pc_without_corrector_is_its_predictor(predictor):
    sde = VPSDE()
    run = lambda name, **o: sample(sde, RING.score_fn(sde), (64, 2), sampler=name, nfe=9,
                                   generator=torch.Generator().manual_seed(4), dtype=f64, **o)
    pc = run("pc", predictor=SAMPLERS[predictor](), corrector=LangevinCorrector(num_steps=0))
    alone = run(predictor)
    assert torch.equal(pc.samples, alone.samples) and pc.nfe == alone.nfe == 9


def test_pc_budget_splits_between_predictor_and_corrector():
    pc = build_sampler("pc", nfe=100, corrector=LangevinCorrector(num_steps=2))
    assert pc.evals_per_step == 3 and pc.num_steps == 33
    calls = []

    def counted(x, t):
        calls.append(1)
        return RING.score(x, t, VPSDE())

    res = pc(VPSDE(), counted, (8, 2), generator=torch.Generator().manual_seed(0))
    assert res.nfe == len(calls) == 33 * 3 + 1 and res.num_steps == 33


def test_pc_with_a_heun_predictor_spends_full_heun_steps():
    """The predictor's share of the budget is N x its evaluations per step: Heun as a predictor takes
    full Heun steps (its odd-budget Euler step belongs to Heun run on its own)."""
    calls = []

    def counted(x, t):
        calls.append(1)
        return RING.score(x, t, VPSDE())

    pc = build_sampler("pc", nfe=32, predictor=SAMPLERS["heun"](), corrector=LangevinCorrector(num_steps=1))
    assert pc.evals_per_step == 3 and pc.num_steps == 10 and pc.grid == "karras" and pc.order == 2
    res = pc(VPSDE(), counted, (8, 2), generator=torch.Generator().manual_seed(0))
    assert res.nfe == len(calls) == 10 * 3 + 1


def test_pc_config_builds_nested_predictor_and_corrector():
    """conf/sampler/pc.yaml: the predictor and the corrector are `_target_` nodes (defaults: Song et
    al.'s reverse-diffusion predictor, one Langevin step at snr 0.16); overrides reach into them and
    their constructors' checks name the field."""
    import pathlib

    from hydra import compose, initialize_config_dir

    from sde_gen.config import ConfigError, instantiate, register_configs

    register_configs()
    conf = pathlib.Path(__file__).resolve().parents[1] / "sde_gen" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        default = instantiate(compose(config_name=None, overrides=["+sampler=pc"])["sampler"], "sampler")
        swapped = instantiate(compose(config_name=None, overrides=[
            "+sampler=pc", "sampler.predictor._target_=sde_gen.samplers.ancestral.Ancestral",
            "+sampler.predictor.variance=beta", "sampler.corrector.num_steps=2"])["sampler"], "sampler")
        bad = compose(config_name=None, overrides=["+sampler=pc", "sampler.corrector.snr=-1"])["sampler"]
    assert type(default.predictor).__name__ == "ReverseDiffusion"
    assert (default.corrector.snr, default.corrector.num_steps, default.corrector.norm) == (0.16, 1, "batch")
    assert type(swapped.predictor).__name__ == "Ancestral" and swapped.predictor.variance == "beta"
    assert swapped.evals_per_step == 3
    with pytest.raises(ConfigError, match=r"sampler: .*snr"):
        instantiate(bad, "sampler")


@pytest.mark.parametrize("opts, field", [({"snr": -1.0}, "snr"), ({"num_steps": -1}, "num_steps"),
                                          ({"num_steps": 1.5}, "num_steps"), ({"norm": "mean"}, "norm")])
def test_langevin_corrector_options_are_validated(opts, field):
    with pytest.raises(ValueError, match=field):
        LangevinCorrector(**opts)


def test_options_are_validated_with_the_field_name():
    for name, opts, field in [
        ("ancestral", {"variance": "large"}, "variance"),
        ("pc", {"predictor": "reverse_diffusion"}, "predictor"),  # an object, not a name
        ("pc", {"predictor": SAMPLERS["adaptive_sde"]()}, "predictor"),  # not a grid sampler
        ("pc", {"predictor": SAMPLERS["pc"]()}, "predictor"),
        ("pc", {"corrector": "langevin"}, "corrector"),
        ("langevin", {"corrector_steps": 0}, "corrector_steps"),
        ("langevin", {"norm": "mean"}, "norm"),
        ("annealed_langevin", {"steps_per_level": 0}, "steps_per_level"),
        ("annealed_langevin", {"epsilon": 0.0}, "epsilon"),
        ("annealed_langevin", {"grid": "karras"}, "grid"),
        ("annealed_langevin", {"nfe": 4, "steps_per_level": 2}, "nfe"),
        ("adaptive_sde", {"rtol": 0.0}, "rtol"),
        ("adaptive_sde", {"atol": -1.0}, "atol"),
        ("adaptive_sde", {"safety": 1.5}, "safety"),
        ("adaptive_sde", {"check_every": 0}, "check_every"),
        ("adaptive_sde", {"nfe": 3}, "nfe"),
    ]:
        with pytest.raises(ValueError, match=field):
            build_sampler(name, **opts)


# ---------------------------------------------------------------- convergence with NFE
CONVERGENCE = {  # sampler: (NFE ladder on the 16-D Gaussian, sample count)
    "reverse_diffusion": ((20, 80, 400), 2000),
    "ancestral": ((20, 80, 400), 2000),
    "pc": ((21, 81, 401), 2000),
    "annealed_langevin": ((160, 640, 2560), 1000),
    "langevin": ((100, 400, 1600), 1000),
}
# reverse_diffusion and ancestral meet every SDE in the exact-law tests above; the fast tier runs VP and
# VE, the slow tier every SDE
FAST = {"reverse_diffusion": VP_VE, "ancestral": VP_VE, "pc": VP_VE, "annealed_langevin": VP_VE[-1:],
        "langevin": VP_VE[-1:]}


def _convergence_cases(slow):
    cases = []
    for name in CONVERGENCE:
        for sde, sid in zip(ALL_SDES, SDE_IDS):
            fast = any(sde is s for s in FAST[name])
            if fast != slow:
                cases.append(pytest.param(name, sde, id=f"{name}-{sid}", marks=[pytest.mark.slow] if slow else []))
    return cases


def _check_gaussian_convergence(name, sde):
    nfes, n = CONVERGENCE[name]
    errs = gaussian_errors(sde, name, nfes, n=n)
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 1.25 * gaussian_floor(n), errs


@pytest.mark.parametrize("name, sde", _convergence_cases(slow=False))
def test_converges_on_gaussian_with_nfe(name, sde):
    _check_gaussian_convergence(name, sde)


@pytest.mark.parametrize("name, sde", _convergence_cases(slow=True))
def test_converges_on_gaussian_with_nfe_full(name, sde):
    _check_gaussian_convergence(name, sde)


def _check_adaptive_tolerance(sde):
    """Tighter rtol: more evaluations and an error that falls to the Monte Carlo floor; NFE == calls.

    safety=0.5: with the paper's 0.9 the controller rejects often, and in low dimension the accept test
    selects the Brownian increments (see adaptive_sde.py), which leaves a bias that no tolerance removes.
    """
    errs, nfes = [], []
    for rtol in (2.0, 0.3, 0.05):
        calls = []
        score = gaussian_score(sde)
        counted = lambda x, t: (calls.append(1), score(x, t))[1]
        res = sample(sde, counted, (4000, 16), sampler="adaptive_sde", nfe=5000, rtol=rtol, safety=0.5,
                     generator=torch.Generator().manual_seed(0), dtype=f64)
        assert res.nfe == len(calls) < 5000  # finished on tolerance, not on budget
        errs.append(float(gaussian_w2_to_target(res.samples, GAUSS)))
        nfes.append(res.nfe)
    floor = gaussian_floor(4000)
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert errs[0] > 3 * floor and errs[1] < 1.25 * floor and errs[2] < 1.25 * floor, (errs, floor)


@pytest.mark.parametrize("sde", VP_VE, ids=VP_VE_IDS)
def test_adaptive_sde_meets_its_tolerance_and_counts_calls(sde):
    _check_adaptive_tolerance(sde)


@pytest.mark.slow
def test_adaptive_sde_meets_its_tolerance_and_counts_calls_full(sde):
    _check_adaptive_tolerance(sde)


def test_adaptive_sde_budget_is_a_maximum():
    """A budget far too small still ends at t_min with finite samples and never overspends."""
    sde = VESDE()
    res = sample(sde, gaussian_score(sde), (256, 16), sampler="adaptive_sde", nfe=12,
                 generator=torch.Generator().manual_seed(0), dtype=f64)
    assert res.nfe <= 12 and torch.isfinite(res.samples).all()


# ---------------------------------------------------------------- the ring: sliced W2 and mode weights
RING_BUDGET = {"reverse_diffusion": 200, "ancestral": 200, "pc": 201, "annealed_langevin": 1000,
               "langevin": 2000, "adaptive_sde": 2000, "euler_maruyama": 200}
RING_OPTIONS = {"adaptive_sde": {"rtol": 0.01, "safety": 0.5}}
# the slow tier covers every sampler x SDE at the same sizes; the adaptive solver runs without
# rejections there (reject=False), which removes the increment-selection bias (see adaptive_sde.py)
RING_OPTIONS_FULL = {"adaptive_sde": {"rtol": 0.005, "safety": 0.5, "reject": False}}
RING_FAST = {"reverse_diffusion", "ancestral", "pc"}


def _ring_floors(n):
    g = torch.Generator().manual_seed(77)
    draw = lambda n, gen: RING.sample(n, gen, dtype=f64)
    sw = noise_floor(draw, n, lambda x, y: sliced_wasserstein(x, y, 200, torch.Generator().manual_seed(9)), 10, g)
    mw = noise_floor(draw, n, lambda x, y: mode_weight_error(x, RING), 10, g)
    return sw["mean"] + 2 * sw["std"], mw["mean"] + 2 * mw["std"]


def _check_ring(name, sde, n=1000, full=False):
    options = RING_OPTIONS_FULL if full else RING_OPTIONS
    res = sample(sde, RING.score_fn(sde), (n, 2), sampler=name, nfe=RING_BUDGET[name],
                 generator=torch.Generator().manual_seed(0), dtype=f64, **options.get(name, {}))
    ref = RING.sample(n, torch.Generator().manual_seed(8), dtype=f64)
    sw = float(sliced_wasserstein(res.samples, ref, 200, torch.Generator().manual_seed(9)))
    mw = float(mode_weight_error(res.samples, RING))
    sw_floor, mw_floor = _ring_floors(n)
    assert sw < sw_floor and mw < mw_floor, (sw, sw_floor, mw, mw_floor)


@pytest.mark.parametrize("name", sorted(RING_FAST))
@pytest.mark.parametrize("sde", VP_VE, ids=VP_VE_IDS)
def test_ring_reaches_the_noise_floor(name, sde):
    _check_ring(name, sde)


def _ring_full_cases():
    cases = []
    for name in sorted(RING_BUDGET):
        for sde, sid in zip(ALL_SDES, SDE_IDS):
            marks = [pytest.mark.slow]
            if name == "adaptive_sde" and sid == "VESDE":  # with rejections (reject=False diverges here)
                marks.append(pytest.mark.xfail(strict=True, reason=ADAPTIVE_VE_RING))
            cases.append(pytest.param(name, sde, id=f"{name}-{sid}", marks=marks))
    return cases


ADAPTIVE_VE_RING = ("known limitation: on the VE ring the solver needs its rejections for stability (without them a "
                    "few samples diverge), and in 2-D the accept test selects the Brownian increments, which skews "
                    "the mode weights at every tolerance (measured mode-weight error ~0.1 vs floor 0.056)")


@pytest.mark.parametrize("name, sde", _ring_full_cases())
def test_ring_reaches_the_noise_floor_full(name, sde):
    # the VE adaptive case keeps the paper's rejections (the documented xfail)
    _check_ring(name, sde, full=not (name == "adaptive_sde" and isinstance(sde, VESDE)))


def test_adaptive_sde_on_the_ring_with_vp():
    _check_ring("adaptive_sde", VPSDE())


def test_every_new_sampler_is_registered():
    for name in ("reverse_diffusion", "ancestral", "langevin", "pc", "annealed_langevin", "adaptive_sde"):
        smp = build_sampler(name)
        assert smp.name == name and isinstance(smp.stochastic, bool) and smp.order >= 1
        assert smp.default_grid in ("uniform", "log_snr", "karras")
