"""The few-step solvers (dpm_solver_3m, unipc, deis, ipndm, dpm_solver_singlestep, and dpm_solver on
the shared exponential-integrator core) and the optimised grids, against independent answers: the closed-form
probability-flow map of a Gaussian (`exact_pf_ode`), numerical quadrature of the interpolating
polynomials, a hand-written DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), closed-form phi functions.
"""
import copy
import math

import pytest
import torch
from scipy import integrate

from sde_gen import VPSDE, make_preset
from sde_gen.metrics import gaussian_w2_to_target
from sde_gen.samplers import build_sampler, time_grid
from sde_gen.samplers.exponential import phi, step_orders

from .conftest import ALL_SDES, DEVICES, SDE_IDS
from .test_samplers_ode import exact_pf_ode, slope

f64 = torch.float64
GAUSS = make_preset("gaussian16d")
NEW = ("dpm_solver_3m", "unipc", "deis", "ipndm")


def coeffs_on(sde, ts):
    alpha, sigma = sde.marginal_coeffs(ts)
    lam = torch.log(alpha) - torch.log(sigma)
    return {"alpha": alpha, "sigma": sigma, "lam": lam, "h": lam[1:] - lam[:-1]}


# ---- phi functions ----
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_matches_its_integral_definition(k):
    """phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du, at small, moderate and large |z|."""
    for z in (-30.0, -3.0, -1.0, -0.999, -0.3, -1e-3, -1e-9, 0.0, 0.5, 2.0):
        ref = integrate.quad(lambda u: math.exp((1 - u) * z) * u ** (k - 1) / math.factorial(k - 1), 0, 1, epsabs=0, epsrel=1e-13)[0]
        got = float(phi(k, torch.tensor(z, dtype=f64)))
        assert got == pytest.approx(ref, rel=1e-11, abs=1e-300), (k, z, got, ref)


def test_step_orders_warm_up_and_lower_order_final():
    assert step_orders(3, 6, False) == [1, 2, 3, 3, 3, 3]
    assert step_orders(3, 6, True) == [1, 2, 3, 3, 2, 1]
    assert step_orders(3, 2, True) == [1, 1]
    assert step_orders(2, 20, True) == [1] + [2] * 19  # 15 or more steps: no lowering at the end


# ---- the coefficient tables against quadrature of the interpolating polynomial ----
def lagrange(nodes, j, u):
    out = 1.0
    for k, n in enumerate(nodes):
        if k != j:
            out *= (u - n) / (nodes[j] - n)
    return out


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_3m_integrates_the_quadratic_through_three_predictions_exactly(sde):
    """DPM-Solver++(3M)'s step = a_t int e^{-(lambda_t - lambda)} q(lambda) dlambda, q the quadratic
    through the last three data predictions (so it is third order), on an uneven grid. The warm-up
    steps (orders 1 and 2) are DDIM and 2M, checked with them."""
    ts = time_grid(sde, 7, "karras")
    co = coeffs_on(sde, ts)
    c, W, _ = build_sampler("dpm_solver_3m", nfe=8, lower_order_final=False, denoise=False).tables(sde, ts, co)
    lam, a = co["lam"].tolist(), co["alpha"].tolist()
    torch.testing.assert_close(c, co["sigma"][1:] / co["sigma"][:-1])
    _, W2, _ = build_sampler("dpm_solver", nfe=8, lower_order_final=False, denoise=False).tables(sde, ts, co)
    torch.testing.assert_close(W[:2, :2], W2[:2], rtol=1e-14, atol=0)
    for i in range(2, 7):
        nodes = [lam[i - j] for j in range(3)]
        for j in range(3):
            if True:
                ref = a[i + 1] * integrate.quad(lambda l: math.exp(-(lam[i + 1] - l)) * lagrange(nodes, j, l), lam[i], lam[i + 1],
                                                epsabs=0, epsrel=1e-12)[0]
            assert float(W[i, j]) == pytest.approx(ref, rel=1e-8, abs=1e-12 * a[i + 1]), (i, j)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_deis_integrates_the_lagrange_polynomial_in_rho(order):
    sde = VPSDE()
    ts = time_grid(sde, 6, "log_snr")
    co = coeffs_on(sde, ts)
    c, W, _ = build_sampler("deis", nfe=7, solver_order=order, lower_order_final=False, denoise=False).tables(sde, ts, co)
    rho, a = torch.exp(-co["lam"]).tolist(), co["alpha"].tolist()
    torch.testing.assert_close(c, co["alpha"][1:] / co["alpha"][:-1])
    for i in range(6):
        p = min(order, i + 1)
        nodes = [rho[i - j] for j in range(p)]
        for j in range(p):
            ref = a[i + 1] * integrate.quad(lambda r: lagrange(nodes, j, r), rho[i], rho[i + 1], epsabs=0, epsrel=1e-12)[0]
            assert float(W[i, j]) == pytest.approx(ref, rel=1e-8, abs=1e-13), (i, j)


def dpmpp_2m_by_hand(sde, x, ts, lower_order_final=True):
    """Lu et al. 2022b, Algorithm 2, written out directly (float64), plus the Tweedie denoising."""
    a, s = sde.marginal_coeffs(ts)
    lam = torch.log(a / s)
    N, prev = ts.numel() - 1, None
    for i in range(N):
        t = ts[i].expand(x.shape[0])
        x0 = (x + s[i] ** 2 * GAUSS.score(x, t, sde)) / a[i]
        h = lam[i + 1] - lam[i]
        if prev is None or (lower_order_final and N < 15 and i == N - 1):
            D = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        prev = x0
        x = s[i + 1] / s[i] * x - a[i + 1] * torch.expm1(-h) * D
    t = ts[-1].expand(x.shape[0])
    return (x + s[-1] ** 2 * GAUSS.score(x, t, sde)) / a[-1]


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_dpm_solver_2m_on_the_shared_core_is_algorithm_2(sde):
    """The refactor onto the exponential-integrator core keeps DPM-Solver++(2M): float64 agreement
    with a direct transcription of the paper (float32 runs differ from it at float32 rounding)."""
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(0), dtype=f64)
    for nfe, grid in ((4, "log_snr"), (11, "karras"), (30, "log_snr")):
        got = build_sampler("dpm_solver", nfe=nfe, grid=grid)(sde, GAUSS.score_fn(sde), x_T=x_T).samples
        ref = dpmpp_2m_by_hand(sde, x_T, time_grid(sde, nfe - 1, grid))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_unip2_with_bh2_and_no_corrector_is_dpm_solver_2m(sde):
    """Zhao et al. 2023: UniP-2 with B(h) = e^h - 1 is DPM-Solver++(2M); the corrector changes it."""
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(1), dtype=f64)
    two_m = build_sampler("dpm_solver", nfe=8)(sde, GAUSS.score_fn(sde), x_T=x_T).samples
    unip = build_sampler("unipc", nfe=8, solver_order=2, corrector=False, variant="bh2", denoise=True)(sde, GAUSS.score_fn(sde), x_T=x_T).samples
    torch.testing.assert_close(unip, two_m, rtol=1e-12, atol=1e-12)
    unipc = build_sampler("unipc", nfe=8, solver_order=2)(sde, GAUSS.score_fn(sde), x_T=x_T).samples
    bh1 = build_sampler("unipc", nfe=8, solver_order=2, variant="bh1")(sde, GAUSS.score_fn(sde), x_T=x_T).samples
    assert (unipc - two_m).abs().max() > 1e-4 and (bh1 - unipc).abs().max() > 1e-6


# ---- measured convergence orders, pathwise against the closed-form flow ----
# (name, options, NFE budgets, expected order); denoise=False, lower_order_final off so every step
# after the warm-up has the full order. "UniPC-3" = UniP-2 + UniC-2 (third order, Zhao et al. 2023).
ORDER_CASES = [
    ("dpm_solver_3m", dict(lower_order_final=False, grid="karras"), (40, 80, 160), 3.0),
    ("unipc", dict(solver_order=2, lower_order_final=False), (40, 80, 160), 3.0),
    ("unipc", dict(solver_order=3, lower_order_final=False, grid="karras"), (40, 80, 160), 4.0),
    ("unipc", dict(solver_order=2, corrector=False, lower_order_final=False), (40, 80, 160), 2.0),
    ("deis", dict(solver_order=3, lower_order_final=False), (40, 80, 160), 2.75),  # 2.7-2.8: pre-asymptotic in rho
    ("ipndm", dict(lower_order_final=False), (40, 80, 160), 2.0),  # fixed weights on uneven rho-steps
]
ORDER_IDS = ["3m", "unipc3", "unipc4-karras", "unip2", "deis3", "ipndm"]


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name, opts, nfes, order", ORDER_CASES, ids=ORDER_IDS)
def test_pathwise_convergence_order(sde, name, opts, nfes, order):
    x_T = sde.prior_sample((64, 16), torch.Generator().manual_seed(0), dtype=f64)
    ref = exact_pf_ode(sde, GAUSS, x_T, sde.T, sde.eps)
    errs = []
    for nfe in nfes:
        res = build_sampler(name, nfe=nfe, denoise=False, **opts)(sde, GAUSS.score_fn(sde), x_T=x_T)
        assert res.nfe == nfe
        errs.append(float((res.samples - ref).norm(dim=1).mean()))
    assert errs[0] > errs[1] > errs[2]
    assert abs(slope(nfes, errs) - order) < 0.35, (errs, slope(nfes, errs))


# VP and VE in the fast suite; sub-VP and cosine (same code path, ~2 s each) marked slow
SDES_1000 = [s if type(s).__name__ == "VESDE" or (type(s).__name__ == "VPSDE" and getattr(s, "schedule", "linear") == "linear")
             else pytest.param(s, marks=pytest.mark.slow) for s in ALL_SDES]


@pytest.mark.parametrize("sde", SDES_1000, ids=SDE_IDS)
@pytest.mark.parametrize("name", ("dpm_solver",) + NEW)
def test_nfe_1000_equals_the_float64_reference_solve(sde, name):
    x_T = sde.prior_sample((8, 16), torch.Generator().manual_seed(3), dtype=f64)
    ref = exact_pf_ode(sde, GAUSS, x_T, sde.T, sde.eps)
    res = build_sampler(name, nfe=1000, denoise=False)(sde, GAUSS.score_fn(sde), x_T=x_T)
    assert res.nfe == 1000 and res.num_steps == 1000
    # tolerance from each method's order and its measured error constant at NFE 40-160
    atol = {"dpm_solver": 5e-5, "ipndm": 5e-5, "deis": 1e-5}.get(name, 1e-6)
    torch.testing.assert_close(res.samples, ref, rtol=0, atol=atol)


# ---- few-step regime ----
@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
@pytest.mark.parametrize("name", NEW)
def test_honest_nfe_and_improvement_at_nfe_3_to_10(sde, name):
    """Every budget from 3 to 10 is spent exactly (the UniC corrector is free) and the outputs are
    finite; the Bures-Wasserstein error at NFE 10 is well below that at NFE 3."""
    x_T = sde.prior_sample((500, 16), torch.Generator().manual_seed(4), dtype=f64)
    errs = {}
    for denoise in (True, False):
        for nfe in range(3, 11):
            res = build_sampler(name, nfe=nfe, denoise=denoise)(sde, GAUSS.score_fn(sde), x_T=x_T)
            assert res.nfe == nfe and res.num_steps == nfe - denoise
            assert torch.isfinite(res.samples).all()
            if denoise:
                errs[nfe] = float(gaussian_w2_to_target(res.samples, GAUSS))
    assert errs[10] < 0.7 * errs[3], errs


def test_float32_runs_and_callback_sees_every_step():
    sde = VPSDE()
    x_T = sde.prior_sample((16, 16), torch.Generator().manual_seed(5))
    for name in NEW:
        seen = []
        res = build_sampler(name, nfe=6)(sde, GAUSS.score_fn(sde), x_T=x_T, callback=lambda i, t, x: seen.append(i))
        assert res.samples.dtype == torch.float32 and seen == list(range(6))  # denoise=False: 6 steps


# ---- options ----
@pytest.mark.parametrize("name, opts, field", [
    ("unipc", dict(solver_order=4), "solver_order"), ("unipc", dict(solver_order=True), "solver_order"),
    ("unipc", dict(variant="bh3"), "variant"), ("unipc", dict(corrector="yes"), "corrector"),
    ("deis", dict(solver_order=0), "solver_order"), ("ipndm", dict(solver_order=5), "solver_order"),
    ("dpm_solver_3m", dict(lower_order_final=1), "lower_order_final"), ("dpm_solver_3m", dict(grid="cosine"), "grid"),
    ("unipc", dict(nfe=0), "nfe"),
])
def test_bad_options_give_one_clear_error(name, opts, field):
    with pytest.raises(ValueError, match=field):
        build_sampler(name, **opts)


def test_min_budget_and_denoise_default():
    """The new solvers default to denoise=False (measured: benchmarks/results/fewsteps_scan.md), so
    one evaluation buys one step; dpm_solver keeps its final denoising step."""
    assert build_sampler("dpm_solver").denoise
    for name in NEW:
        assert not build_sampler(name).denoise
        assert build_sampler(name, nfe=1).num_steps == 1
        assert build_sampler(name, nfe=2, denoise=True).num_steps == 1
        with pytest.raises(ValueError, match="nfe must be >= 2"):
            build_sampler(name, nfe=1, denoise=True)


# ---- optimised grids ----
from sde_gen.samplers.grids import OPTIMIZED_GRIDS_PATH, load_grid_table, optimize_grid, stored_grid  # noqa: E402
from sde_gen import SDES  # noqa: E402


def test_stored_grids_are_strictly_decreasing_from_T_to_t_min_and_document_their_inputs():
    table = load_grid_table()
    assert table["entries"], OPTIMIZED_GRIDS_PATH
    by_repr = {repr(cls()): cls() for cls in SDES.values()}
    for e in table["entries"]:
        sde = by_repr[e["sde"]]
        ts = torch.tensor(e["times"], dtype=f64)
        assert ts.numel() == e["num_steps"] + 1
        assert float(ts[0]) == sde.T and float(ts[-1]) == e["t_min"] == sde.eps
        assert (ts[1:] < ts[:-1]).all(), e["times"]
        assert set(e["inputs"]["tuned_on"].split(" (")[0].split(" + ")) <= {"gaussian16d", "mixture64d"}
        before, after = (e["mse_log_snr_grid"], e["mse_optimized"]) if isinstance(e["mse_optimized"], list) else ([e["mse_log_snr_grid"]], [e["mse_optimized"]])
        assert sum(math.log(a / b) for a, b in zip(after, before)) <= 0  # never worse than the start


def test_sampler_runs_on_its_stored_grid_and_refuses_a_missing_one():
    e = next(e for e in load_grid_table()["entries"] if e["sampler"] == "deis")
    sde = VPSDE()
    assert not e["denoise"]
    smp = build_sampler("deis", nfe=e["num_steps"], grid="optimized")
    seen = []
    smp(sde, GAUSS.score_fn(sde), (4, 16), callback=lambda i, t, x: seen.append(float(t)))
    assert seen == e["times"][1:]
    with pytest.raises(ValueError, match="no stored grid"):
        build_sampler("deis", nfe=e["num_steps"], grid="optimized", solver_order=2)(sde, GAUSS.score_fn(sde), (4, 16))
    with pytest.raises(ValueError, match="no stored grid"):  # tuned without the denoising step
        build_sampler("deis", nfe=e["num_steps"] + 1, grid="optimized", denoise=True)(sde, GAUSS.score_fn(sde), (4, 16))
    with pytest.raises(ValueError, match="optimized"):
        build_sampler("heun", nfe=5, grid="optimized")(sde, GAUSS.score_fn(sde), (4, 16))


def test_optimize_grid_reproduces_the_stored_entry_from_its_inputs():
    """The cheap entry (deis, VP, gaussian16d) recomputed from the inputs it records; its stored
    error is checked against the closed-form flow (exact map + Tweedie), independent of the tool's
    own reference solve. (Also a test that the tool's optimum beats the log-SNR grid it starts from.)"""
    e = next(e for e in load_grid_table()["entries"] if e["sampler"] == "deis")
    sde = VPSDE()
    shape = e["inputs"]["batch_shape"]
    x_T = sde.prior_sample(tuple(shape), torch.Generator().manual_seed(0), dtype=f64)
    smp = build_sampler("deis", nfe=e["num_steps"])
    again = optimize_grid(sde, smp, GAUSS.score_fn(sde), x_T, reference_steps=e["inputs"]["reference_steps"],
                          max_evals=e["inputs"]["max_evals"], tuned_on=e["inputs"]["tuned_on"])
    assert again["times"] == pytest.approx(e["times"], rel=1e-6, abs=1e-9)
    assert again["mse_optimized"] == pytest.approx(e["mse_optimized"], rel=1e-6)
    out = build_sampler("deis", nfe=e["num_steps"], grid="optimized")(sde, GAUSS.score_fn(sde), x_T=x_T).samples
    exact = exact_pf_ode(sde, GAUSS, x_T, sde.T, sde.eps)  # denoise=False: the flow's value at t_min
    assert float((out - exact).pow(2).sum(1).mean()) == pytest.approx(e["mse_optimized"], rel=1e-4)
    assert e["mse_optimized"] < 0.8 * e["mse_log_snr_grid"]


def test_optimize_grid_rejects_stochastic_samplers():
    with pytest.raises(ValueError, match="deterministic"):
        optimize_grid(VPSDE(), build_sampler("ddim", nfe=5, eta=1.0), GAUSS.score_fn(VPSDE()), torch.zeros(2, 16, dtype=f64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NEW)
def test_same_samples_on_every_device(device, name):
    """Tables and buffers follow x's device: the run on `device` equals the CPU run (float64)."""
    sde = VPSDE().to(device)
    x_T = VPSDE().prior_sample((16, 16), torch.Generator().manual_seed(6), dtype=f64)
    cpu = build_sampler(name, nfe=6)(VPSDE(), GAUSS.score_fn(VPSDE()), x_T=x_T).samples
    gm = copy.deepcopy(GAUSS).to(device)  # a copy: the module-level oracle stays on the CPU
    out = build_sampler(name, nfe=6)(sde, gm.score_fn(sde), x_T=x_T.to(device)).samples
    assert out.device.type == torch.device(device).type
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-10, atol=1e-10)


# ---- singlestep DPM-Solver (2S / 3S) on the shared core ----
from sde_gen.samplers.exponential import singlestep_orders  # noqa: E402


def test_singlestep_orders_spend_the_budget_as_dpm_solver_fast():
    """Lu et al. 2022a, Sec. 3.4: order-3 steps, the remainder as one lower-order step; 3 | E ends 2, 1."""
    assert singlestep_orders(3, 10, True) == [3, 3, 3, 1]
    assert singlestep_orders(3, 11, True) == [3, 3, 3, 2]
    assert singlestep_orders(3, 9, True) == [3, 3, 2, 1]
    assert singlestep_orders(3, 9, False) == [3, 3, 3]
    assert singlestep_orders(3, 3, True) == [2, 1] and singlestep_orders(3, 1, True) == [1]
    assert singlestep_orders(2, 5, True) == [2, 2, 1] and singlestep_orders(1, 4, True) == [1] * 4
    for p in (1, 2, 3):
        for E in range(1, 30):
            for lof in (True, False):
                o = singlestep_orders(p, E, lof)
                assert sum(o) == E and max(o) <= p and min(o) >= 1


def dpm_solver_singlestep_by_hand(sde, x, ts, orders):
    """DPM-Solver-2/3 (Lu et al. 2022a, Alg. 1-2; r1 = 1/2, and r1 = 1/3, r2 = 2/3) in data prediction,
    written out with expm1 (float64): each stage integrates the line through P_i and the last stage."""
    a, s = sde.marginal_coeffs(ts)
    lam = torch.log(a / s)
    B = x.shape[0]

    def x0(x, t):
        al, sg = sde.marginal_coeffs(t)
        return (x + sg ** 2 * GAUSS.score(x, t.expand(B), sde)) / al

    def at(l):
        t = sde.time_at_half_log_snr(l)
        al, sg = sde.marginal_coeffs(t)
        return t, al, sg

    for i, p in enumerate(orders):
        h = lam[i + 1] - lam[i]
        m = x0(x, ts[i])
        if p == 1:
            x = s[i + 1] / s[i] * x - a[i + 1] * torch.expm1(-h) * m
        elif p == 2:
            t1, a1, s1 = at(lam[i] + h / 2)
            u1 = s1 / s[i] * x - a1 * torch.expm1(-h / 2) * m
            x = s[i + 1] / s[i] * x - a[i + 1] * torch.expm1(-h) * m + 2 * a[i + 1] * (torch.expm1(-h) / h + 1) * (x0(u1, t1) - m)
        else:
            r1, r2 = 1 / 3, 2 / 3
            t1, a1, s1 = at(lam[i] + r1 * h)
            t2, a2, s2 = at(lam[i] + r2 * h)
            u1 = s1 / s[i] * x - a1 * torch.expm1(-r1 * h) * m
            u2 = (s2 / s[i] * x - a2 * torch.expm1(-r2 * h) * m
                  + r2 / r1 * a2 * (torch.expm1(-r2 * h) / (r2 * h) + 1) * (x0(u1, t1) - m))
            x = s[i + 1] / s[i] * x - a[i + 1] * torch.expm1(-h) * m + a[i + 1] / r2 * (torch.expm1(-h) / h + 1) * (x0(u2, t2) - m)
    return x


@pytest.mark.parametrize("sde", SDES_1000, ids=SDE_IDS)
def test_dpm_solver_singlestep_is_the_papers_step(sde):
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(8), dtype=f64)
    for order, nfe, grid, lof in ((3, 10, "log_snr", True), (3, 9, "karras", True), (2, 7, "log_snr", True), (3, 12, "uniform", False)):
        res = build_sampler("dpm_solver_singlestep", nfe=nfe, solver_order=order, grid=grid, lower_order_final=lof)(sde, GAUSS.score_fn(sde), x_T=x_T)
        orders = singlestep_orders(order, nfe, lof)
        assert res.nfe == nfe and res.num_steps == len(orders)
        ref = dpm_solver_singlestep_by_hand(sde, x_T, time_grid(sde, len(orders), grid), orders)
        torch.testing.assert_close(res.samples, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", SDES_1000, ids=SDE_IDS)
@pytest.mark.parametrize("order, nfes", [(2, (60, 120, 240)), (3, (120, 240, 480))], ids=["2S", "3S"])
def test_dpm_solver_singlestep_convergence_order(sde, order, nfes):
    """Pathwise against the closed-form flow: 2S order 2, 3S order 3 (measured 2.8-2.9 at these
    budgets, rising with NFE: pre-asymptotic)."""
    x_T = sde.prior_sample((64, 16), torch.Generator().manual_seed(0), dtype=f64)
    ref = exact_pf_ode(sde, GAUSS, x_T, sde.T, sde.eps)
    errs = []
    for nfe in nfes:
        res = build_sampler("dpm_solver_singlestep", nfe=nfe, solver_order=order, lower_order_final=False)(sde, GAUSS.score_fn(sde), x_T=x_T)
        assert res.nfe == nfe and res.num_steps == nfe // order
        errs.append(float((res.samples - ref).norm(dim=1).mean()))
    assert errs[0] > errs[1] > errs[2]
    assert abs(slope(nfes, errs) - order) < 0.35, (errs, slope(nfes, errs))


@pytest.mark.parametrize("sde", [s if type(s).__name__ == "VPSDE" and getattr(s, "schedule", "linear") == "linear"
                                 else pytest.param(s, marks=pytest.mark.slow) for s in ALL_SDES], ids=SDE_IDS)
def test_dpm_solver_singlestep_at_nfe_1000_equals_the_float64_reference_solve(sde):
    x_T = sde.prior_sample((8, 16), torch.Generator().manual_seed(3), dtype=f64)
    ref = exact_pf_ode(sde, GAUSS, x_T, sde.T, sde.eps)
    res = build_sampler("dpm_solver_singlestep", nfe=1000)(sde, GAUSS.score_fn(sde), x_T=x_T)
    assert res.nfe == 1000 and res.num_steps == 334  # 333 order-3 steps and one order-1 step
    torch.testing.assert_close(res.samples, ref, rtol=0, atol=1e-6)


def test_dpm_solver_singlestep_few_steps_options_and_device():
    sde = VPSDE()
    x_T = sde.prior_sample((500, 16), torch.Generator().manual_seed(4), dtype=f64)
    errs = {}
    for nfe in range(1, 11):
        for dn in (False, True):
            if nfe == 1 and dn:
                continue
            res = build_sampler("dpm_solver_singlestep", nfe=nfe, denoise=dn)(sde, GAUSS.score_fn(sde), x_T=x_T)
            assert res.nfe == nfe and torch.isfinite(res.samples).all()
            errs[nfe, dn] = float(gaussian_w2_to_target(res.samples, GAUSS))
    assert errs[10, False] < 0.7 * errs[3, False], errs
    x32 = x_T[:16].float()
    assert build_sampler("dpm_solver_singlestep", nfe=6)(sde, GAUSS.score_fn(sde), x_T=x32).samples.dtype == torch.float32
    for opts, field in ((dict(solver_order=4), "solver_order"), (dict(solver_order=True), "solver_order"),
                        (dict(lower_order_final="no"), "lower_order_final"), (dict(grid="cosine"), "grid")):
        with pytest.raises(ValueError, match=field):
            build_sampler("dpm_solver_singlestep", **opts)
    with pytest.raises(ValueError, match="condition"):
        from sde_gen.inverse import Inpainting, Replacement
        mask = torch.arange(16) < 8
        build_sampler("dpm_solver_singlestep", condition=Replacement(Inpainting(mask), torch.zeros(8)))


def test_dpm_solver_singlestep_as_a_pc_predictor_spends_its_budget():
    """As the predictor of `pc` every step is a full-order step (evals_per_step = solver_order)."""
    from sde_gen.samplers import LangevinCorrector

    sde = VPSDE()
    for order in (2, 3):
        pred = build_sampler("dpm_solver_singlestep", solver_order=order)
        assert pred.evals_per_step == order
        pc = build_sampler("pc", nfe=13, predictor=pred, corrector=LangevinCorrector(num_steps=1))
        res = pc(sde, GAUSS.score_fn(sde), (8, 16), generator=torch.Generator().manual_seed(0))
        steps = (13 - 1) // (order + 1)
        assert res.num_steps == steps and res.nfe == steps * (order + 1) + 1 and torch.isfinite(res.samples).all()
