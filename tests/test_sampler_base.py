"""The sampler template: NFE accounting, seeding, devices and dtypes, time grids, the score check,
non-finite tracking, and adding a sampler (one class, one registry line, one YAML)."""
import logging
import math
from dataclasses import dataclass

import pytest
import torch

import sde_gen
from sde_gen import VESDE, VPSDE, make_preset
from sde_gen.metrics import gaussian_w2_to_target
from sde_gen.samplers import SAMPLERS, CountingScore, GridSampler, build_sampler, sample, time_grid
from sde_gen.utils import append_dims

from .conftest import ALL_SDES, DEVICES, SDE_IDS, grid_for

f64 = torch.float64


@pytest.mark.parametrize("kind", ["uniform", "log_snr", "karras"])
def test_time_grids(sde, kind):
    ts = time_grid(sde, 12, kind)
    assert ts.dtype == f64 and ts.shape == (13,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps
    assert torch.all(ts[1:] < ts[:-1])
    lam = sde.half_log_snr(ts)
    if kind == "uniform":
        torch.testing.assert_close(ts[1:] - ts[:-1], (ts[1] - ts[0]).expand(12))
    elif kind == "log_snr":
        steps = lam[1:] - lam[:-1]
        torch.testing.assert_close(steps, steps[:1].expand(12), rtol=1e-7, atol=1e-9)
    else:
        root = torch.exp(-lam) ** (1 / 7)
        steps = root[1:] - root[:-1]
        torch.testing.assert_close(steps, steps[:1].expand(12), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_reported_equals_score_calls(name):
    sde = VPSDE()
    gm = make_preset("ring2d")
    calls = []

    def counted(x, t):
        calls.append(1)
        return gm.score(x, t, sde)

    for nfe in (5, 12):
        calls.clear()
        res = sample(sde, counted, (16, 2), sampler=name, nfe=nfe, generator=torch.Generator().manual_seed(0))
        assert res.nfe == len(calls) <= nfe


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_reproducible_and_follows_device_dtype(name, device, dtype):
    sde = VPSDE()
    gm = make_preset("ring2d").to(device)
    run = lambda: sample(sde, gm.score_fn(sde), (32, 2), sampler=name, nfe=10,
                         generator=torch.Generator(device=device).manual_seed(3), dtype=dtype).samples
    a, b = run(), run()
    assert a.device.type == device and a.dtype == dtype
    assert torch.equal(a, b)


def test_sampler_options_are_validated():
    with pytest.raises(ValueError, match="sampler"):
        build_sampler("euler")
    with pytest.raises(ValueError, match="nfe"):
        build_sampler("euler_maruyama", nfe=0)
    with pytest.raises(ValueError, match="nfe must be >= 2"):
        build_sampler("euler_maruyama", nfe=1)  # one evaluation goes to denoising
    with pytest.raises(ValueError, match="grid"):
        build_sampler("euler_maruyama", grid="cubic")
    with pytest.raises(ValueError, match="exactly one of shape"):
        build_sampler("euler_maruyama")(VPSDE(), lambda x, t: -x)


def test_callback_sees_every_step():
    seen = []
    res = sample(VESDE(), make_preset("ring2d").score_fn(VESDE()), (8, 2), nfe=11, generator=torch.Generator().manual_seed(0),
                 callback=lambda i, t, x: seen.append((i, float(t), tuple(x.shape))))
    assert [s[0] for s in seen] == list(range(res.num_steps)) and seen[-1][1] == VESDE().eps


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_euler_maruyama_converges_on_gaussian(sde):
    """Bures-Wasserstein error to the exact 16-D Gaussian falls with NFE (same noise, 4000 samples)."""
    gm = make_preset("gaussian16d")
    errs = []
    for nfe in (10, 40, 160):
        x = sample(sde, gm.score_fn(sde), (4000, 16), nfe=nfe, generator=torch.Generator().manual_seed(0), dtype=f64,
                   **grid_for(sde)).samples
        errs.append(float(gaussian_w2_to_target(x, gm)))
    assert errs[0] > errs[1] > errs[2]
    floor = float(gaussian_w2_to_target(gm.sample(4000, torch.Generator().manual_seed(1), dtype=f64), gm))
    assert errs[2] < 2.5 * floor


# ---- the score function's first output is checked (shape, dtype, device) ----
@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("bad", ["(B, 1)", "(1, D)", "dtype"])
def test_score_output_unlike_x_is_refused(name, bad):
    """A score of shape (B, 1) or (1, D) for x of shape (B, D) used to broadcast silently (samples
    with mean |x| ~ 50 instead of ~1.3); a float64 score for float32 x used to promote silently.
    Now the first evaluation raises, naming the three properties."""
    sde, gm = VPSDE(), make_preset("ring2d")

    def score(x, t):
        s = gm.score(x, t, sde)
        return {"(B, 1)": s[:, :1], "(1, D)": s[:1], "dtype": s.double()}[bad]

    with pytest.raises(ValueError, match="shape, dtype and device of x") as info:
        sample(sde, score, (16, 2), sampler=name, nfe=10, generator=torch.Generator().manual_seed(0))
    assert "(16, 2)" in str(info.value) and "float32" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_score_on_another_device_is_refused():
    sde, gm = VPSDE(), make_preset("ring2d")
    with pytest.raises(ValueError, match="device"):
        sample(sde, lambda x, t: gm.score(x.cpu(), t.cpu(), sde), (16, 2), nfe=5, device="cuda",
               generator=torch.Generator("cuda").manual_seed(0))


# ---- non-finite rows: tracked on the device, reported once ----
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_check_finite_counts_the_rows_that_became_non_finite(name, caplog):
    """x_T with an inf in row 9, a score that is NaN for rows 2 and 5: three rows reported, once,
    in `num_nonfinite` and a warning; without the option nothing is counted (None)."""
    sde, gm = VPSDE(), make_preset("ring2d")
    poisoned = torch.zeros(16, dtype=torch.bool)
    poisoned[[2, 5]] = True

    def score(x, t):
        s = gm.score(x, t, sde)
        return torch.where(poisoned[:, None], torch.full_like(s, math.nan), s)

    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(0))
    x_T[9, 1] = math.inf
    run = lambda **o: sample(sde, score, x_T=x_T, sampler=name, nfe=10, generator=torch.Generator().manual_seed(1), **o)
    with caplog.at_level(logging.WARNING, logger="sde_gen.samplers.base"):
        res = run(check_finite=True)
    assert res.num_nonfinite == 3
    assert [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()] == [
        f"{SAMPLERS[name].__name__}: 3 of 16 samples became non-finite (inf or NaN); first rows: [2, 5, 9]"]
    assert run().num_nonfinite is None
    clean = sample(sde, gm.score_fn(sde), (16, 2), sampler=name, nfe=10, check_finite=True,
                   generator=torch.Generator().manual_seed(1))
    assert clean.num_nonfinite == 0


def test_non_finite_tracking_makes_no_host_round_trip(monkeypatch):
    """The grid loop with tracking on: every way of pulling a value to the host raises; none is used."""
    sde, gm = VPSDE(), make_preset("ring2d")
    smp = build_sampler("euler_maruyama", nfe=8, check_finite=True)
    x = sde.prior_sample((8, 2), torch.Generator().manual_seed(0))
    ts = smp.time_grid(sde)
    score = CountingScore(gm.score_fn(sde), track_nonfinite=True)
    score(x, ts[0].expand(8))  # the first call (with its one-off output check) outside the patch

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the sampler loop")

    for attr in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    x, steps = smp.solve(sde, score, x, ts, torch.Generator().manual_seed(1), None)
    monkeypatch.undo()
    assert steps == smp.num_steps and score.nonfinite.shape == (8,) and not score.nonfinite.any()


# ---- adding a sampler: one class, one registry line, one YAML ----
@dataclass(eq=False, kw_only=True)
class ToyEuler(GridSampler):
    """Deterministic Euler on the probability-flow ODE: the smallest sampler one can add."""

    name = "toy_euler"
    stochastic = False

    def step(self, sde, score, x, i, t, t_next, generator, state):
        k1, k2 = (append_dims(k.to(x.dtype), x.ndim) for k in sde.probability_flow_coeffs(t))
        h = append_dims((t_next - t).to(x.dtype), x.ndim)
        return x + h * (k1 * x + k2 * score(x, t))


def test_a_new_sampler_is_one_class_one_registry_line_one_yaml(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir

    from sde_gen.config import instantiate, register_target

    monkeypatch.setitem(SAMPLERS, ToyEuler.name, ToyEuler)  # the registry line
    sde, gm = VESDE(), make_preset("gaussian16d")
    x_T = sde.prior_sample((32, 16), torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sde_gen.sample(sde, gm.score_fn(sde), x_T=x_T, sampler="toy_euler", nfe=13, grid="karras")
    assert res.nfe == 13 and res.num_steps == 12
    # the template supplied the grid, the loop, the counting and the final denoising: the result is
    # pf_ode's Euler (torchdiffeq on the same grid) followed by the same Tweedie step
    ref = sample(sde, gm.score_fn(sde), x_T=x_T, sampler="pf_ode", method="euler", nfe=13, grid="karras")
    torch.testing.assert_close(res.samples, ref.samples, rtol=1e-12, atol=1e-12)
    # the YAML, extending the schema generated from the class
    register_target("sampler", ToyEuler.name, ToyEuler)
    (tmp_path / "sampler").mkdir()
    (tmp_path / "sampler" / "toy_euler.yaml").write_text("defaults:\n  - /sampler_toy_euler_schema\nnfe: 7\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        built = instantiate(compose(config_name=None, overrides=["+sampler=toy_euler"])["sampler"], "sampler")
    assert isinstance(built, ToyEuler) and built.nfe == 7 and built.num_steps == 6


def test_the_template_leaves_the_sampler_unchanged_by_a_call():
    """No per-call mutation of the sampler: its fields and facts are the same before and after."""
    sde, gm = VPSDE(), make_preset("ring2d")
    for name in sorted(SAMPLERS):
        smp = build_sampler(name, nfe=12)
        before = (repr(smp), smp.num_steps, dict(vars(smp)))
        smp(sde, gm.score_fn(sde), (8, 2), generator=torch.Generator().manual_seed(0))
        assert (repr(smp), smp.num_steps, dict(vars(smp))) == before, name


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VP", "VE"])
def test_t_min_whose_std_underflows_is_refused(sde):
    """At the smallest positive double s(t_min) underflows to 0, where the score and the Tweedie step
    divide by zero: the grid refuses it before any evaluation instead of returning inf/NaN samples."""
    calls = []
    with pytest.raises(ValueError, match=r"t_min must lie in \(0, T\) .*marginal_std"):
        sample(sde, lambda x, t: calls.append(1) or -x, (4, 2), nfe=5, t_min=5e-324)
    assert not calls
