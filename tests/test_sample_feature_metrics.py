"""The sample app's classifier-feature metrics (issue 14, item 1): with `feature_classifier=` on an
image checkpoint, metrics.json holds the Frechet distance and KID between the samples and the test
set in the classifier's penultimate features, recomputed here from samples.pt and the loaded
classifier; a source without a test set is refused before any sampling."""
import json
import pathlib

import pytest
import torch
from hydra import compose, initialize_config_dir

from sde_gen import build_dataset, classifier_features, frechet_distance, kid, load_classifier
from sde_gen.apps.sample import main as sample_main
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.training import train

TINY = ["model.channels=8", "train.steps=2", "train.batch_size=16", "lr_scheduler.warmup=1", "train.eval_samples=16",
        "train.eval_projections=8", "train.noise_floor_replicates=2", "train.score_error_samples=16",
        "train.progress=false", "train.plots=false", "train.log_every=1", "sampler.nfe=2", "device=cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    register_configs()
    with initialize_config_dir(config_dir=str(pathlib.Path(CONF_DIR)), version_base=None):
        train(compose("config", overrides=["experiment=digits", *TINY]), str(base / "score"))
        train(compose("config", overrides=["experiment=classifier_digits", *TINY]), str(base / "clf"))
    return base


def test_feature_metrics_recomputed_from_the_written_samples(runs, tmp_path):
    out = tmp_path / "sample"
    sample_main(["source=checkpoint", f"checkpoint={runs / 'score'}", f"feature_classifier={runs / 'clf'}",
                 "sampler=dpm_solver", "sampler.nfe=4", "num_samples=60", "plot=false", "device=cpu",
                 "metrics_seed=7", f"hydra.run.dir={out}"])
    m = json.loads((out / "metrics.json").read_text())
    samples = torch.load(out / "samples.pt", weights_only=True)
    clf = load_classifier(str(runs / "clf"), device="cpu").model
    test = build_dataset("digits").test
    f_s, f_t = classifier_features(clf, samples), classifier_features(clf, test)
    assert m["classifier_fd_features"] == f_s.shape[1] == 16
    assert m["classifier_fd"] == pytest.approx(float(frechet_distance(f_t, f_s)), rel=1e-6)
    half = test.shape[0] // 2
    assert m["classifier_fd_test_halves"] == pytest.approx(float(frechet_distance(f_t[:half], f_t[half:2 * half])), rel=1e-6)
    mean, std = kid(f_t, f_s, subsets=10, subset_size=60, generator=torch.Generator().manual_seed(7))
    assert m["classifier_kid"] == pytest.approx(float(mean), rel=1e-6, abs=1e-12)
    assert m["classifier_kid_std"] == pytest.approx(float(std), rel=1e-6, abs=1e-12)


def test_feature_classifier_needs_a_checkpoint_with_a_test_set(runs, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as err:
        sample_main(["problem=ring2d", f"feature_classifier={runs / 'clf'}", "num_samples=10",
                     "device=cpu", f"hydra.run.dir={tmp_path}"])
    assert err.value.code == 2
    assert "feature_classifier needs source=checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "samples.pt").exists()


def test_feature_classifier_is_refused_for_inverse_tasks(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        sample_main(["problem=gaussian16d", "task=inpaint", "feature_classifier=somewhere", "device=cpu",
                     f"hydra.run.dir={tmp_path}"])
    assert err.value.code == 2 and "feature_classifier scores unconditional samples" in capsys.readouterr().err
