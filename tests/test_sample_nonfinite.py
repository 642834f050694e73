"""The sampling app when a sampler diverges on some rows: metrics.json records the finite fraction,
the metrics are those of the finite rows alone, and the picture shows only finite points (its title
says how many were left out) instead of crashing inside matplotlib.

The divergence is made on purpose: an oracle whose score is NaN on the first k rows of every call
(the samplers act row by row, so exactly those k samples end non-finite and the others are the
samples of an unmodified run).
"""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import sde_gen.apps.sample as sample_app
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.evaluation import oracle_metrics
from sde_gen.oracles import make_preset

N = 200
OVERRIDES = [f"num_samples={N}", "sampler.nfe=4", "noise_floor_replicates=3", "num_projections=32", "device=cpu"]


def _cfg():
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="sample", overrides=OVERRIDES)
    GlobalHydra.instance().clear()
    return cfg


def _oracle_with_nan_rows(k):
    """make_preset("ring2d") whose score is NaN on the first `k` rows of every call."""
    def make(name):
        oracle = make_preset(name)
        exact = oracle.score_fn

        def score_fn(sde):
            f = exact(sde)

            def score(x, t):
                s = f(x, t).clone()
                s[:k] = float("nan")
                return s

            return score

        oracle.score_fn = score_fn
        return oracle

    return make


@pytest.fixture
def pictures(monkeypatch):
    """Spy on the app's picture writer: record what it was asked to draw, then draw it."""
    calls = []
    real = sample_app.save_picture

    def spy(path, samples, reference, title):
        calls.append({"samples": samples.clone(), "title": title})
        real(path, samples, reference, title)

    monkeypatch.setattr(sample_app, "save_picture", spy)
    return calls


def test_nan_rows_are_counted_left_out_of_the_metrics_and_not_drawn(tmp_path, monkeypatch, pictures):
    k = 30
    clean = sample_app.run(_cfg(), str(tmp_path / "clean"), {"sampler": "euler_maruyama", "sde": "vp"})
    monkeypatch.setattr(sample_app, "make_preset", _oracle_with_nan_rows(k))
    out = tmp_path / "nan"
    metrics = sample_app.run(_cfg(), str(out), {"sampler": "euler_maruyama", "sde": "vp"})

    # samples.pt keeps every row as drawn: exactly the first k are non-finite
    samples = torch.load(out / "samples.pt", weights_only=True)
    clean_samples = torch.load(tmp_path / "clean" / "samples.pt", weights_only=True)
    row_finite = torch.isfinite(samples).all(1)
    assert samples.shape == (N, 2) and not row_finite[:k].any() and row_finite[k:].all()
    assert torch.equal(samples[k:], clean_samples[k:])  # the other rows are untouched

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["finite_fraction"] == (N - k) / N and on_disk["num_finite"] == N - k
    assert on_disk["finite"] is False and on_disk["num_samples"] == N
    assert clean["finite_fraction"] == 1.0 and clean["finite"] is True

    # the metrics are those of the N - k finite samples on their own
    expected = oracle_metrics(samples[k:], make_preset("ring2d"), None, 32, 3, on_disk["config"]["metrics_seed"])
    for key in ("sw2", "sw2_floor_mean", "sw2_floor_std", "mode_weight_error"):
        assert on_disk[key] == pytest.approx(expected[key], rel=1e-12), key
    assert all(torch.isfinite(torch.tensor(on_disk[key])) for key in ("sw2", "sw2_ratio", "mode_weight_error"))

    # the picture: only finite points, and the title says how many were left out
    assert len(pictures) == 2
    drawn = pictures[1]
    assert drawn["samples"].shape == (N - k, 2) and torch.isfinite(drawn["samples"]).all()
    assert f"{k} of {N}" in drawn["title"] and "non-finite" in drawn["title"]
    assert "non-finite" not in pictures[0]["title"]
    assert (out / "samples.png").stat().st_size > 1000


def test_all_rows_nan_writes_metrics_without_a_picture(tmp_path, monkeypatch, pictures):
    monkeypatch.setattr(sample_app, "make_preset", _oracle_with_nan_rows(N))
    metrics = sample_app.run(_cfg(), str(tmp_path), {"sampler": "euler_maruyama", "sde": "vp"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["finite_fraction"] == 0.0 and on_disk["num_finite"] == 0 and on_disk["finite"] is False
    assert "sw2" not in on_disk and metrics["nfe_spent"] == 4
    assert pictures == [] and not (tmp_path / "samples.png").exists()
