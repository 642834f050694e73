"""The sampling app and the report command, run in-process through their `main(argv)` entries.

Metrics written by the app are recomputed here independently from samples.pt: moments and the
Bures-Wasserstein distance with scipy's matrix square root, the prior mismatch by integrating the
mean and covariance ODEs of the linear probability-flow ODE with scipy, component responsibilities
with scipy's Gaussian densities, and sliced W2 with numpy sorting.
"""
import json
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.integrate
import scipy.stats
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sde_gen import VPSDE, make_preset
from sde_gen.config import ConfigError, instantiate, register_configs
from sde_gen.oracles import GaussianMixture
from sde_gen.apps.report import main as report_main
from sde_gen.apps.sample import main as sample_main
from sde_gen.samplers import SAMPLERS

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sde_gen", "conf")
SMALL = ["noise_floor_replicates=4", "num_projections=64", "device=cpu"]


pytestmark = pytest.mark.usefixtures("hydra_full_errors")


@pytest.fixture
def count_score_calls(monkeypatch):
    calls = []
    original = GaussianMixture.score

    def counting(self, x, t=None, sde=None):
        if sde is not None:  # the samplers' score calls (metrics use densities, not scores)
            calls.append(x.shape[0])
        return original(self, x, t, sde)

    monkeypatch.setattr(GaussianMixture, "score", counting)
    return calls


def _bw_scipy(m1, c1, m2, c2):
    r2 = scipy.linalg.sqrtm(c2).real
    cross = scipy.linalg.sqrtm(r2 @ c1 @ r2).real
    return float(np.sqrt(max(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross), 0.0)))


def _prior_mismatch_by_ode(oracle, sde):
    """Mean and covariance of the exact probability-flow ODE started from the prior, integrated
    by scipy from T to 0: dm/dt = A m + b, dC/dt = A C + C A^T with A = f + g^2/2 C_t^{-1},
    b = -g^2/2 C_t^{-1} a mu (the ODE is linear for Gaussian data)."""
    mu, sigma = oracle.mean().numpy(), oracle.covariance().numpy()
    D = mu.size

    def coeffs(t):
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = (float(v) for v in sde.marginal_coeffs(tt))
        return float(sde.drift_coeff(tt)), float(sde.diffusion(tt)) ** 2, a, s

    def rhs(t, y):
        m, C = y[:D], y[D:].reshape(D, D)
        f, g2, a, s = coeffs(t)
        Pinv = np.linalg.inv(a * a * sigma + s * s * np.eye(D))
        A = f * np.eye(D) + 0.5 * g2 * Pinv
        dm = A @ m - 0.5 * g2 * Pinv @ (a * mu)
        return np.concatenate([dm, (A @ C + C @ A.T).ravel()])

    y0 = np.concatenate([np.zeros(D), (sde.prior_std ** 2 * np.eye(D)).ravel()])
    sol = scipy.integrate.solve_ivp(rhs, (sde.T, 0.0), y0, rtol=1e-9, atol=1e-11, method="DOP853")
    m0, C0 = sol.y[:D, -1], sol.y[D:, -1].reshape(D, D)
    return _bw_scipy(m0, 0.5 * (C0 + C0.T), mu, sigma)


def _sw2_numpy(x, y, k, rng):
    theta = rng.standard_normal((x.shape[1], k))
    theta /= np.linalg.norm(theta, axis=0)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def test_app_on_the_gaussian_writes_correct_samples_metrics_and_picture(tmp_path, count_score_calls):
    sample_main(
        ["problem=gaussian16d", "sampler=dpm_solver", "sampler.nfe=6", "num_samples=500", "batch_size=200",
         f"hydra.run.dir={tmp_path}", *SMALL]
    )
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert samples.shape == (500, 16) and samples.dtype == torch.float32 and torch.isfinite(samples).all()
    assert (tmp_path / "samples.png").stat().st_size > 1000
    # NFE: the reported numbers are the calls actually made, batch by batch (200, 200, 100)
    assert count_score_calls and metrics["score_calls"] == len(count_score_calls)
    assert metrics["num_batches"] == 3 and sum(count_score_calls) == 500 * metrics["nfe_spent"]
    assert metrics["nfe_requested"] == 6 and metrics["nfe_spent"] <= 6 and metrics["sampler"] == "dpm_solver"
    assert metrics["time_total_s"] >= metrics["time_score_s"] > 0
    assert metrics["time_sampler_s"] == pytest.approx(metrics["time_total_s"] - metrics["time_score_s"])
    # quality metrics recomputed from samples.pt with scipy
    oracle = make_preset("gaussian16d")
    x = samples.double().numpy()
    bw = _bw_scipy(x.mean(0), np.cov(x.T), oracle.mean().numpy(), oracle.covariance().numpy())
    assert metrics["bures_wasserstein"] == pytest.approx(bw, rel=1e-6)
    assert metrics["bw_ratio"] == pytest.approx(bw / metrics["bw_floor_mean"], rel=1e-6)
    # the floor: what exact samples of the same size score, here by numpy draws
    rng = np.random.default_rng(0)
    mu, cov = oracle.mean().numpy(), oracle.covariance().numpy()
    floors = []
    for _ in range(8):
        e = rng.multivariate_normal(mu, cov, size=500)
        floors.append(_bw_scipy(e.mean(0), np.cov(e.T), mu, cov))
    assert abs(metrics["bw_floor_mean"] - np.mean(floors)) < 4 * np.std(floors) + 0.05 * np.mean(floors)
    # prior mismatch: W2(p_T, prior) directly, and through the exact ODE map by numerical integration
    sde = VPSDE()
    a_T, s_T = (float(v) for v in sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64)))
    w2_T = _bw_scipy(a_T * mu, a_T ** 2 * cov + s_T ** 2 * np.eye(16), np.zeros(16), np.eye(16))
    assert metrics["prior_mismatch_w2_T"] == pytest.approx(w2_T, rel=1e-5)
    assert metrics["prior_mismatch_w2_0_ode"] == pytest.approx(_prior_mismatch_by_ode(oracle, sde), rel=1e-4)


def test_app_on_the_ring_mode_weights_and_sliced_w2(tmp_path):
    sample_main(["problem=ring2d", "sampler=euler_maruyama", "sampler.nfe=30", "num_samples=1000",
                 f"hydra.run.dir={tmp_path}", *SMALL])
    x = torch.load(tmp_path / "samples.pt", weights_only=True).double().numpy()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    oracle = make_preset("ring2d")
    w, means = oracle.weights.numpy(), oracle.means.numpy()
    dens = np.stack([wk * scipy.stats.multivariate_normal(m, 0.04 * np.eye(2)).pdf(x) for wk, m in zip(w, means)], 1)
    freq = np.bincount(dens.argmax(1), minlength=8) / len(x)
    assert metrics["mode_weight_error"] == pytest.approx(0.5 * np.abs(freq - w).sum(), abs=1e-12)
    # sliced W2 to fresh exact data: an independent draw and projections agree within the noise
    rng = np.random.default_rng(1)
    labels = rng.choice(8, size=1000, p=w)
    fresh = means[labels] + 0.2 * rng.standard_normal((1000, 2))
    mine = _sw2_numpy(x, fresh, 256, rng)
    assert abs(mine - metrics["sw2"]) < 5 * metrics["sw2_floor_std"] + 0.02
    assert metrics["sw2_ratio"] == pytest.approx(metrics["sw2"] / metrics["sw2_floor_mean"])


def test_multirun_then_report_has_both_rows_and_the_plot(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sample_main(["-m", "sampler=euler_maruyama,dpm_solver", "sampler.nfe=4", "problem=ring2d", "num_samples=300",
                 f"hydra.sweep.dir={sweep}", *SMALL])
    runs = sorted(p.parent.name for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2
    assert report_main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ring2d")]
    assert len(rows) == 2
    assert any("| euler_maruyama |" in r for r in rows) and any("| dpm_solver |" in r for r in rows)
    import matplotlib.image

    img = matplotlib.image.imread(sweep / "report.png")
    assert img.ndim == 3 and img.shape[0] > 100


@pytest.mark.parametrize(
    "override, field",
    [
        ("problem=ring3d", "problem"),
        ("num_samples=0", "num_samples"),
        ("sampler.nfe=0", "nfe"),
        ("noise_floor_replicates=1", "noise_floor_replicates"),
        ("source=checkpoint", "checkpoint"),
        ("dtype=float16", "dtype"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_field(tmp_path, override, field, count_score_calls):
    with pytest.raises(ConfigError, match=field):
        sample_main([override, f"hydra.run.dir={tmp_path}", "device=cpu"])
    assert not count_score_calls and not (tmp_path / "samples.pt").exists()


def test_bad_device_fails_at_start_up(tmp_path, count_score_calls):
    with pytest.raises(ConfigError, match="device"):
        sample_main(["device=gpu0", f"hydra.run.dir={tmp_path}"])
    assert not count_score_calls and not (tmp_path / "samples.pt").exists()


def test_misspelt_key_fails_at_composition(tmp_path):
    with pytest.raises(Exception, match="num_sampels"):
        sample_main(["num_sampels=3", f"hydra.run.dir={tmp_path}"])


def test_sweep_config_composes_and_covers_every_sampler():
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="sample", overrides=["experiment=sampler_grid"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert cfg.hydra.mode.name == "MULTIRUN"
        samplers = params["sampler"].split(",")
        assert set(samplers) == set(SAMPLERS)
        assert [int(v) for v in params["sampler.nfe"].split(",")] == [10, 20, 50, 100, 200, 1000]
        assert set(params["problem"].split(",")) == {"ring2d", "mixture64d", "gaussian16d"}
        for name in samplers:  # each point of the grid composes and builds (smallest NFE: the strictest)
            sub = compose(config_name="sample", overrides=[f"sampler={name}", "sampler.nfe=10"])
            assert instantiate(sub.sampler, "sampler").nfe == 10


def test_checkpoint_source_samples_the_trained_ema_model(tmp_path):
    from sde_gen.checkpoint import load_trained
    from sde_gen.samplers import build_sampler
    from sde_gen.training import train

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["train.steps=4", "train.checkpoint_every=4", "train.eval_every=1000",
                                           "train.eval_samples=100", "device=cpu",
                                           "train.progress=false", "train.plots=false"])
    GlobalHydra.instance().clear()
    train(cfg, str(tmp_path / "train"))
    out = tmp_path / "sample"
    sample_main(["source=checkpoint", f"checkpoint={tmp_path / 'train'}", "sampler=dpm_solver", "sampler.nfe=5",
                 "num_samples=64", "seed=3", f"hydra.run.dir={out}", *SMALL])
    samples = torch.load(out / "samples.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    # the same sampler, seed and EMA model, built here directly, gives the same samples
    trained = load_trained(str(tmp_path / "train"), device="cpu", ema=True)
    again = build_sampler("dpm_solver", nfe=5)(trained.sde, trained.model, shape=(64, 2),
                                               generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    torch.testing.assert_close(samples, again.samples)
    assert metrics["score_calls"] == again.nfe and "from checkpoint" in metrics["sde"]
    assert "sw2_ratio" in metrics and metrics["problem"] == "train"  # ring2d data carry their oracle
