"""Checks of the likelihood functions written against the mutants that the older likelihood tests
let live (docs/testing.md, "Mutation testing"): `bits_per_dim` recomputed from the same
generator stream and `log_likelihood`, the per-pixel Jacobian, dtypes, defaults, and the
bookkeeping of `evaluate_dataset` (batches, standard errors, time, progress bar, checks)."""
import math
import time

import pytest
import torch

from sde_gen import VPSDE, GaussianMixture
from sde_gen.likelihood import bits_per_dim, evaluate_dataset, log_likelihood

f64 = torch.float64
SDE = VPSDE()
ORACLE = GaussianMixture.gaussian([0.1, -0.2], [0.5, 0.8])
SCORE = ORACLE.score_fn(SDE)
FAST = dict(method="rk4", fixed_steps=2)  # accuracy is not the point: each check recomputes the same solve


class _Map:
    """Pixels v in [0, 4) -> model space x = c v - 1, with c a scalar or one value per pixel."""

    def __init__(self, c):
        self.model_per_pixel = c

    def to_model(self, v):
        return torch.as_tensor(self.model_per_pixel, dtype=v.dtype) * v - 1.0


@pytest.mark.parametrize("c", [0.5, [0.5, 0.25]])
@pytest.mark.parametrize("num_dequant", [1, 3])
def test_bits_per_dim_is_the_change_of_variables_of_each_draw(c, num_dequant):
    pixels = torch.tensor([[0, 3], [2, 1], [1, 1]])
    m = _Map(c)
    got = bits_per_dim(SDE, SCORE, pixels, m, num_dequant=num_dequant, generator=torch.Generator().manual_seed(4), **FAST)
    g = torch.Generator().manual_seed(4)
    draws, nfe = [], 0
    log_c = torch.log(torch.as_tensor(c, dtype=torch.float32)).expand(2).sum()
    for _ in range(num_dequant):
        u = torch.rand(pixels.shape, generator=g, dtype=torch.float32)  # int pixels: torch's default dtype
        res = log_likelihood(SDE, SCORE, m.to_model(pixels.float() + u), generator=g, **FAST)
        draws.append((-res.logp - log_c) / (2 * math.log(2.0)))
        nfe += res.nfe
    draws = torch.stack(draws)
    assert got.draws.dtype == torch.float32 and got.draws.shape == (num_dequant, 3) and got.nfe == nfe
    torch.testing.assert_close(got.draws, draws, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.bpd, draws.mean(0), rtol=1e-6, atol=1e-6)
    if num_dequant == 1:
        assert torch.isnan(got.std_error).all()


def test_bits_per_dim_dtype_and_default_draws():
    pixels = torch.tensor([[0.0, 3.0]], dtype=f64)
    res = bits_per_dim(SDE, SCORE, pixels, _Map(0.5), generator=torch.Generator().manual_seed(0), **FAST)
    assert res.draws.shape == (1, 1) and res.bpd.dtype == f64  # one draw by default; float pixels keep their dtype
    res = bits_per_dim(SDE, SCORE, pixels.float(), _Map(0.5), dtype=f64, **FAST)
    assert res.bpd.dtype == f64


def test_bits_per_dim_checks():
    pixels = torch.tensor([[0, 3]])
    for bad in (0.0, -1.0, [0.5, 0.0]):
        with pytest.raises(ValueError, match=r"^model_per_pixel must be > 0 \(dx/dv of an increasing affine map\)$"):
            bits_per_dim(SDE, SCORE, pixels, _Map(bad), **FAST)
    with pytest.raises(ValueError, match=r"^num_dequant must be an integer >= 1"):
        bits_per_dim(SDE, SCORE, pixels, _Map(0.5), num_dequant=0, **FAST)


def _points(n, seed=0):
    return ORACLE.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_evaluate_dataset_batches_and_statistics(capsys):
    data = _points(257)
    t0 = time.perf_counter()
    out = evaluate_dataset(SDE, SCORE, data, **FAST)
    wall = time.perf_counter() - t0
    one = log_likelihood(SDE, SCORE, data[:3], **FAST)
    # default batches of 256: two solves of a fixed NFE each
    assert out.nfe == 2 * one.nfe and out.unit == "nats" and out.dim == 2
    assert out.values.shape == out.estimator_std_error.shape == (257,) and out.values.dtype == torch.float32
    torch.testing.assert_close(out.values[:3], one.logp, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.estimator_std_error, torch.zeros(257))
    assert out.std_error == pytest.approx(float(out.values.std()) / math.sqrt(257), rel=1e-6)
    assert 0 <= out.seconds <= wall
    assert "likelihood" not in capsys.readouterr().err  # no progress bar unless asked


def test_evaluate_dataset_small_sets_dtype_and_device():
    two = evaluate_dataset(SDE, SCORE, _points(2), device="cpu", **FAST)
    assert two.std_error == pytest.approx(abs(float(two.values[0] - two.values[1])) / 2, rel=1e-5)
    one = evaluate_dataset(SDE, SCORE, _points(1), **FAST)
    assert math.isnan(one.std_error) and one.values.shape == (1,)
    assert evaluate_dataset(SDE, SCORE, _points(2), dtype=f64, **FAST).values.dtype == f64
    ints = torch.tensor([[0, 1], [1, 0]])  # integer points in model space: torch's default dtype
    assert evaluate_dataset(SDE, SCORE, ints, **FAST).values.dtype == torch.float32


def test_evaluate_dataset_images_default_one_draw():
    pixels = torch.tensor([[0, 3], [2, 1]])
    out = evaluate_dataset(SDE, SCORE, pixels, dataset_or_map=_Map(0.5), generator=torch.Generator().manual_seed(0), **FAST)
    assert out.unit == "bits/dim" and torch.isnan(out.estimator_std_error).all() and out.values.dtype == torch.float32


@pytest.mark.parametrize("data", [torch.zeros(5), torch.zeros(0, 2)])
def test_evaluate_dataset_shape_check(data):
    with pytest.raises(ValueError, match=r"^data must have shape \(N, \*event\) with N >= 1; got \((5,|0, 2)\)$"):
        evaluate_dataset(SDE, SCORE, data, **FAST)


def test_standard_errors_over_draws_use_the_unbiased_std():
    pixels = torch.tensor([[0, 3], [2, 1]])
    for n in (2, 3):
        res = bits_per_dim(SDE, SCORE, pixels, _Map(0.5), num_dequant=n, generator=torch.Generator().manual_seed(1), **FAST)
        torch.testing.assert_close(res.std_error, res.draws.std(0, unbiased=True) / math.sqrt(n), rtol=1e-6, atol=0)


def test_evaluate_dataset_forwards_generator_draws_and_dtype():
    pixels = torch.tensor([[0, 3], [2, 1]])
    img = evaluate_dataset(SDE, SCORE, pixels, dataset_or_map=_Map(0.5), num_dequant=3, dtype=f64,
                           generator=torch.Generator().manual_seed(5), **FAST)
    ref = bits_per_dim(SDE, SCORE, pixels, _Map(0.5), num_dequant=3, dtype=f64, generator=torch.Generator().manual_seed(5), **FAST)
    assert img.values.dtype == f64 and torch.isfinite(img.estimator_std_error).all()
    torch.testing.assert_close(img.values, ref.bpd, rtol=0, atol=0)
    pts = _points(4)
    # Gaussian probes: with Rademacher ones the oracle's diagonal Jacobian gives the exact trace whatever the draw
    hutch = dict(FAST, divergence="hutchinson", num_probes=2, probe="gaussian")
    out = evaluate_dataset(SDE, SCORE, pts, generator=torch.Generator().manual_seed(6), **hutch)
    ref = log_likelihood(SDE, SCORE, pts, generator=torch.Generator().manual_seed(6), **hutch)
    torch.testing.assert_close(out.values, ref.logp, rtol=0, atol=0)
    torch.testing.assert_close(out.estimator_std_error, ref.std_error, rtol=0, atol=0)


def test_evaluate_dataset_progress_bar(capsys, monkeypatch):
    from tqdm import std

    # no tqdm monitor thread: a thread left running would be inherited, holding tqdm's lock, by
    # every process forked after this test (mutmut forks one per mutant)
    monkeypatch.setattr(std.tqdm, "monitor_interval", 0)
    evaluate_dataset(SDE, SCORE, _points(3), batch_size=2, progress=True, **FAST)
    err = capsys.readouterr().err
    assert "likelihood: 100%" in err and "3/3" in err and "sample/s" in err


def test_non_finite_rows_named_in_the_whole_set():
    data = _points(30)
    data[25:28, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^data has non-finite values \(inf or NaN\) in 3 of 30 rows: \[25, 26, 27\]; remove or fix them"):
        evaluate_dataset(SDE, SCORE, data, batch_size=10, **FAST)
    for n, shown in ((21, ", ".join(map(str, range(20))) + ", ..."), (20, ", ".join(map(str, range(20))))):
        data = _points(30)
        data[:n] = float("inf")
        with pytest.raises(ValueError) as err:
            log_likelihood(SDE, SCORE, data, **FAST)
        assert f"in {n} of 30 rows: [{shown}];" in str(err.value)


def test_probes_default_stream_and_device():
    from sde_gen.likelihood.divergence import draw_probes

    x = torch.zeros(4, 3, dtype=f64)
    v = draw_probes(x, 5, generator=torch.Generator().manual_seed(2))
    assert v.shape == (5, 4, 3) and v.dtype == f64 and set(v.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(v, draw_probes(x, 5, generator=torch.Generator().manual_seed(2)))
    g = draw_probes(x, 5, "gaussian", torch.Generator().manual_seed(2))
    assert torch.equal(g, torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(2), dtype=f64))
    xm = torch.empty(4, 3, device="meta")
    assert draw_probes(xm, 2).device.type == draw_probes(xm, 2, "gaussian").device.type == "meta"


@pytest.mark.parametrize("probes", [None, 3])
def test_drift_and_divergence_is_the_linear_part_plus_the_score_part(probes):
    from sde_gen.likelihood.divergence import draw_probes, drift_and_divergence, score_and_divergence

    x = _points(4)
    t = torch.full((4,), 0.3, dtype=f64)  # float64 times do not promote the float32 state
    v = None if probes is None else draw_probes(x, probes, generator=torch.Generator().manual_seed(0))
    drift, div = drift_and_divergence(SDE, SCORE, x, t, v)
    score, trace = score_and_divergence(SCORE, x, t, v)
    k1, k2 = (k.float() for k in SDE.probability_flow_coeffs(t))
    assert drift.dtype == div.dtype == torch.float32
    torch.testing.assert_close(drift, k1[:, None] * x + k2[:, None] * score)
    torch.testing.assert_close(div, 2 * k1 + k2 * trace)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fixed_steps=2, method="dopri5"), r"^method \(with fixed_steps\) must be one of"),
    (dict(method="rk5"), r"^method must be one of"),
    (dict(rtol=0.0), r"^rtol must be > 0"),
    (dict(atol=-1.0), r"^atol must be > 0"),
    (dict(divergence="trace"), r"^divergence must be one of"),
    (dict(fixed_steps=0), r"^fixed_steps must be an integer >= 1"),
    (dict(num_probes=0), r"^num_probes must be an integer >= 1"),
    (dict(probe="uniform"), r"^probe must be one of"),
    (dict(time_variable="s"), r"^time_variable must be one of"),
    (dict(vjp_chunk_size=0), r"^vjp_chunk_size must be an integer >= 1"),
])
def test_log_likelihood_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_likelihood(SDE, SCORE, _points(2), **kwargs)
    with pytest.raises(ValueError, match=r"^x must have shape \(B, \*event\); got \(3,\)$"):
        log_likelihood(SDE, SCORE, torch.zeros(3))


def test_log_likelihood_defaults_and_fixed_grid():
    x = _points(3).double()
    default = log_likelihood(SDE, SCORE, x)
    explicit = log_likelihood(SDE, SCORE, x, method="dopri5", rtol=1e-5, atol=1e-5)
    assert torch.equal(default.logp, explicit.logp) and default.nfe == explicit.nfe
    fixed = log_likelihood(SDE, SCORE, x, fixed_steps=40)
    assert fixed.nfe == 4 * 40  # rk4 by default: four evaluations per step of the uniform grid
    tight = log_likelihood(SDE, SCORE, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fixed.logp, tight.logp, rtol=0, atol=1e-5)
    # the prior's value comes back in x's dtype
    x32 = _points(3)
    out = log_likelihood(SDE, SCORE, x32, prior_logp=lambda z: -0.5 * z.double().pow(2).sum(1), **FAST)
    assert out.logp.dtype == out.prior_logp.dtype == torch.float32


def test_probe_kind_and_generator_reach_the_estimator():
    x = _points(3)
    run = lambda probe, seed: log_likelihood(SDE, SCORE, x, divergence="hutchinson", num_probes=2, probe=probe,
                                             generator=torch.Generator().manual_seed(seed), **FAST).logp
    assert torch.equal(run("gaussian", 1), run("gaussian", 1)) and torch.equal(run("rademacher", 1), run("rademacher", 1))
    assert not torch.equal(run("gaussian", 1), run("rademacher", 1))
    assert not torch.equal(run("gaussian", 1), run("gaussian", 2))


def test_single_gaussian_probe_and_one_row_many_probes():
    from sde_gen.likelihood.divergence import score_and_divergence

    A = torch.tensor([[-1.0, 0.3], [0.7, -2.0]], dtype=f64)
    fn = lambda x, t: x @ A.T  # Jacobian A everywhere
    x = torch.randn(1, 2, dtype=f64)
    t = torch.full((1,), 0.5, dtype=f64)
    for m in (1, 3):
        v = torch.randn(m, 1, 2, generator=torch.Generator().manual_seed(m), dtype=f64)
        _, trace = score_and_divergence(fn, x, t, v)
        assert trace.shape == (m, 1)
        torch.testing.assert_close(trace[:, 0], torch.einsum("mi,ij,mj->m", v[:, 0], A, v[:, 0]), rtol=1e-12, atol=1e-12)


def test_exact_trace_in_blocks_for_a_large_event():
    from sde_gen.likelihood.divergence import score_and_divergence

    x = torch.randn(1, 1024, dtype=f64)
    _, trace = score_and_divergence(lambda x, t: -2.0 * x, x, torch.zeros(1, dtype=f64))
    assert float(trace) == -2.0 * 1024


def test_bits_per_dim_in_float64_and_its_probe_stream():
    """Float64 pixels: u drawn in float64 and log c taken in float64 (0.3 is not a float32);
    Hutchinson probes come from the same generator as the dequantisation noise."""
    pixels = torch.tensor([[0.0, 3.0], [2.0, 1.0]], dtype=f64)
    m = _Map(0.3)
    got = bits_per_dim(SDE, SCORE, pixels, m, generator=torch.Generator().manual_seed(3), **FAST)
    g = torch.Generator().manual_seed(3)
    u = torch.rand(pixels.shape, generator=g, dtype=f64)
    res = log_likelihood(SDE, SCORE, m.to_model(pixels + u), generator=g, **FAST)
    expected = (-res.logp - 2 * math.log(0.3)) / (2 * math.log(2.0))
    torch.testing.assert_close(got.draws[0], expected, rtol=1e-13, atol=1e-13)
    hutch = dict(FAST, divergence="hutchinson", num_probes=2, probe="gaussian")
    a = bits_per_dim(SDE, SCORE, pixels, m, generator=torch.Generator().manual_seed(3), **hutch)
    b = bits_per_dim(SDE, SCORE, pixels, m, generator=torch.Generator().manual_seed(3), **hutch)
    assert torch.equal(a.draws, b.draws)


def test_chunked_exact_divergence_and_batch_size_check():
    x = _points(3)
    ref = log_likelihood(SDE, SCORE, x, **FAST)
    torch.testing.assert_close(log_likelihood(SDE, SCORE, x, vjp_chunk_size=1, **FAST).logp, ref.logp)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1"):
        evaluate_dataset(SDE, SCORE, x, batch_size=0, **FAST)


@pytest.mark.parametrize("time_variable", ["t", "log_sigma"])
def test_fixed_grid_is_uniform_in_the_time_variable(monkeypatch, time_variable):
    """The solver gets fixed_steps + 1 float64 points, uniform from t_min to T (or in log sigma),
    ending exactly at the end point, and the caller's options."""
    from sde_gen.likelihood import change_of_variables as cov

    seen = {}
    real = cov.integrate

    def spy(*args, **kwargs):
        seen.update(kwargs, ends=args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(cov, "integrate", spy)
    log_likelihood(SDE, SCORE, _points(2), fixed_steps=5, t_min=1e-3, time_variable=time_variable,
                   options={"perturb": False})
    ends = torch.tensor([1e-3, SDE.T], dtype=f64)
    if time_variable == "log_sigma":
        ends = -SDE.half_log_snr(ends)
    assert seen["grid"].dtype == f64 and torch.equal(seen["ends"], ends)
    torch.testing.assert_close(seen["grid"], torch.linspace(float(ends[0]), float(ends[1]), 6, dtype=f64), rtol=1e-15, atol=1e-15)
    assert float(seen["grid"][-1]) == float(ends[1]) and seen["options"] == {"perturb": False}
