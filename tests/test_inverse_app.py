"""`sde-gen-sample task=inpaint|colorize|linear`: run in-process; metrics.json is recomputed here
independently from samples.pt and observation.pt (numpy / scipy: the posterior by conditioning the
joint Gaussian, Bures-W2 with scipy's matrix square root, residuals with numpy)."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra.core.global_hydra import GlobalHydra

from sde_gen import make_preset
from sde_gen.config import register_configs
from sde_gen.apps.sample import main as sample_main
from sde_gen.inverse import mask_preset

from .test_inverse import reference_posterior

SMALL = ["noise_floor_replicates=3", "num_projections=64", "device=cpu", "plot=false"]
CONF = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "sde_gen" / "conf")


pytestmark = pytest.mark.usefixtures("hydra_full_errors")


def _bw_scipy(m1, c1, m2, c2):
    r2 = scipy.linalg.sqrtm(c2).real
    cross = scipy.linalg.sqrtm(r2 @ c1 @ r2).real
    return float(np.sqrt(max(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross), 0.0)))


def _load(tmp_path):
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    x = torch.load(tmp_path / "samples.pt").double().numpy()
    obs = torch.load(tmp_path / "observation.pt")
    return metrics, x, obs


def test_inpaint_gaussian16d_metrics_recomputed(tmp_path):
    sample_main(["problem=gaussian16d", "task=inpaint", "inverse.method=exact_conditional", "inverse.mask=random",
                 "sampler.nfe=60", "num_samples=400", "dtype=float64", "plot=true", f"hydra.run.dir={tmp_path}",
                 *[o for o in SMALL if o != "plot=false"]])
    metrics, x, obs = _load(tmp_path)
    mask = obs["mask"].numpy()
    torch.testing.assert_close(obs["mask"], mask_preset("random", (16,), 0.7, torch.Generator().manual_seed(1)))
    assert mask.sum() == 16 - round(0.7 * 16)
    y = obs["y"].numpy()
    np.testing.assert_array_equal(x[:, mask], np.broadcast_to(y, (400, mask.sum())))  # known = y exactly
    assert metrics["known_max_abs_error"] == 0.0 and metrics["residual_max"] == 0.0
    np.testing.assert_allclose(obs["A"].numpy() @ obs["x_true"].numpy()[0], y)
    oracle = make_preset("gaussian16d")
    _, means, covs = reference_posterior(oracle, obs["A"], 0.0, obs["y"])
    bw = _bw_scipy(x.mean(0), np.cov(x.T), means[0], covs[0])
    assert metrics["distance_to"] == "exact posterior"
    assert metrics["bures_wasserstein"] == pytest.approx(bw, rel=1e-6, abs=1e-8)
    assert metrics["bw_ratio"] == pytest.approx(bw / metrics["bw_floor_mean"], rel=1e-6)
    assert metrics["nfe_spent"] == 60 and metrics["inverse"]["num_known"] == mask.sum()
    assert (tmp_path / "samples.png").exists()


def test_linear_noisy_mixture_metrics_recomputed(tmp_path):
    sample_main(["problem=mixture64d", "task=linear", "inverse.method=dps", "inverse.noise_std=0.1",
                 "inverse.num_observations=8", "sampler.nfe=30", "num_samples=200", f"hydra.run.dir={tmp_path}", *SMALL])
    metrics, x, obs = _load(tmp_path)
    A, y = obs["A"].numpy(), obs["y"].numpy()
    assert A.shape == (8, 64) and obs["noise_std"] == 0.1
    res = np.linalg.norm(y - x @ A.T, axis=1)
    assert metrics["residual_mean"] == pytest.approx(res.mean(), rel=1e-5)
    assert metrics["residual_max"] == pytest.approx(res.max(), rel=1e-5)
    assert "known_max_abs_error" not in metrics  # noisy: the known part is not pinned
    for key in ("sw2", "sw2_floor_mean", "sw2_ratio", "mode_weight_error"):
        assert np.isfinite(metrics[key]), key


def test_tweedie_moment_options_reach_the_condition_and_every_pass_is_counted(tmp_path):
    sample_main(["problem=gaussian16d", "task=inpaint", "inverse.method=tweedie_moment", "inverse.covariance=cg",
                 "inverse.cg_iters=3", "sampler=dpm_solver", "sampler.nfe=50", "num_samples=200", "dtype=float64",
                 f"hydra.run.dir={tmp_path}", *SMALL])
    metrics, x, obs = _load(tmp_path)
    mask = obs["mask"].numpy()
    np.testing.assert_array_equal(x[:, mask], np.broadcast_to(obs["y"].numpy(), (200, mask.sum())))
    assert "covariance='cg'" in metrics["inverse"]["condition"]
    assert metrics["nfe_spent"] == 50 and metrics["num_steps"] == 9  # 10 calls of 5 passes (1 + 3 + 1): 9 steps + denoising
    assert np.isfinite(metrics["bw_ratio"])


@pytest.mark.parametrize("override, match", [
    (["task=colorize", "problem=gaussian16d"], "task=colorize needs data with 3 colour channels"),
    (["task=inpaint", "sampler=pf_ode"], "condition works with the grid samplers"),
    (["task=inpaint", "inverse.method=inpaint"], "inverse.method"),
    (["task=inpaint", "inverse.mask=left"], "inverse.mask"),
    (["task=inpaint", "inverse.missing=1.0"], "inverse.missing"),
    (["task=inpaint", "inverse.covariance=diagonal"], "inverse.covariance"),
    (["task=inpaint", "inverse.cg_iters=0"], "inverse.cg_iters"),
    (["task=inpaint", "inverse.method=repaint", "sampler=dpm_solver"], "multistep sampler 'dpm_solver'"),
    (["task=denoise"], "task"),
    (["task=inpaint", "label=1"], "label and guidance must stay unset"),
])
def test_bad_inverse_options_fail_before_sampling(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        sample_main([*override, f"hydra.run.dir={tmp_path}", "device=cpu", "num_samples=10"])
    assert not (tmp_path / "samples.pt").exists()


@pytest.mark.parametrize("name", ["half", "random", "box"])
@pytest.mark.parametrize("shape", [(10,), (3, 6, 4)])
def test_mask_presets(name, shape):
    mask = mask_preset(name, shape, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == shape and mask.dtype == torch.bool and mask.any() and not mask.all()
    if name == "half":
        assert (mask[:5].all() and not mask[5:].any()) if shape == (10,) else (mask[:, :3].all() and not mask[:, 3:].any())
    if name == "box" and shape == (3, 6, 4):
        assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])  # every channel alike
    with pytest.raises(ValueError, match="mask must be one of"):
        mask_preset("left", shape)


def test_inverse_multirun_is_tabulated_by_the_report(tmp_path):
    from sde_gen.apps.report import main as report_main

    sweep = tmp_path / "sweep"
    sample_main(["-m", "problem=gaussian16d", "task=inpaint", "inverse.method=replacement,exact_conditional",
                 "sampler.nfe=30", "num_samples=200", f"hydra.sweep.dir={sweep}", *SMALL])
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.rglob("metrics.json"))]
    assert len(metrics) == 2
    assert report_main([str(sweep)]) == 0
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| gaussian16d")]
    assert len(rows) == 2
    for m in metrics:  # the BW / floor of each run appears in its row
        assert any(f"| {m['bw_ratio']:.3g} (floor" in r for r in rows), m["bw_ratio"]


def _train_tiny(run_dir, *overrides):
    from hydra import compose, initialize_config_dir

    from sde_gen.training import train

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["train.steps=2", "train.checkpoint_every=2", "train.eval_every=1000",
                                           "train.eval_samples=64", "device=cpu", "train.progress=false",
                                           "train.plots=false", *overrides])
    GlobalHydra.instance().clear()
    train(cfg, str(run_dir))


def test_checkpoint_on_oracle_data_is_measured_against_its_posterior(tmp_path):
    """A network trained (briefly) on ring2d: the dataset's oracle gives the exact posterior."""
    _train_tiny(tmp_path / "train", "model.hidden=16", "model.depth=1", "model.time_embed_dim=8")
    out = tmp_path / "sample"
    sample_main(["source=checkpoint", f"checkpoint={tmp_path / 'train'}", "task=inpaint", "inverse.method=repaint",
                 "sampler.nfe=21", "num_samples=100", f"hydra.run.dir={out}", *SMALL])
    metrics, x, obs = _load(out)
    y32 = obs["y"].to(torch.float32).double().numpy()  # float32 samples: the known coordinate is y in float32
    np.testing.assert_array_equal(x[:, 0], np.full(100, y32[0]))
    assert metrics["known_max_abs_error"] < 1e-6 and metrics["distance_to"] == "exact posterior"
    assert np.isfinite(metrics["sw2_ratio"]) and 0 <= metrics["mode_weight_error"] <= 1
    assert metrics["nfe_spent"] == 21


@pytest.mark.slow  # trains a (tiny) U-Net: about 15 s on the shared 2-core machine
def test_checkpoint_images_without_oracle(tmp_path):
    """Digits (8x8): the observation is a test image; no posterior, so residual metrics only."""
    _train_tiny(tmp_path / "train", "experiment=digits", "model.channels=8", "train.batch_size=32")
    out = tmp_path / "sample"
    sample_main(["source=checkpoint", f"checkpoint={tmp_path / 'train'}", "task=inpaint", "inverse.mask=random",
                 "inverse.method=dps", "sampler.nfe=6", "num_samples=8", "plot=true", f"hydra.run.dir={out}",
                 *[o for o in SMALL if o != "plot=false"]])
    metrics, x, obs = _load(out)
    mask = obs["mask"]
    assert x.shape == (8, *mask.shape) and obs["x_true"].shape == (1, *mask.shape)
    known = torch.from_numpy(x)[:, mask]
    torch.testing.assert_close(known, obs["y"].expand_as(known), rtol=0, atol=1e-6)  # float32 samples
    assert "sw2" not in metrics and "bures_wasserstein" not in metrics
    assert metrics["residual_max"] < 1e-4 and (out / "samples.png").exists()
    with pytest.raises(ValueError, match="exact_conditional needs the exact posterior"):
        sample_main(["source=checkpoint", f"checkpoint={tmp_path / 'train'}", "task=inpaint",
                     "inverse.method=exact_conditional", f"hydra.run.dir={tmp_path / 'bad'}", *SMALL])
    assert not (tmp_path / "bad" / "samples.pt").exists()
