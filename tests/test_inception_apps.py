"""FID / KID in the apps (issue 14, item 1): sde-gen-sample and sde-gen-eval with
`inception.weights=` on an image checkpoint report FID and KID, recomputed here from the written
samples and the same (random) weights file; the second run reads the cached reference statistics;
a missing weights file or a source without images is one error line before any sampling."""
import json
import pathlib

import pytest
import torch
from hydra import compose, initialize_config_dir

from sde_gen import build_dataset, kid
from sde_gen.apps.evaluate import main as eval_main
from sde_gen.apps.sample import main as sample_main
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.inception import WEIGHTS_FILE_NAME, FIDInceptionV3, inception_features, load_inception
from sde_gen.metrics import frechet_distance_from_statistics
from sde_gen.training import train

TINY = ["model.channels=8", "train.steps=2", "train.batch_size=16", "lr_scheduler.warmup=1", "train.eval_samples=16",
        "train.eval_projections=8", "train.noise_floor_replicates=2", "train.score_error_samples=16",
        "train.progress=false", "train.plots=false", "train.log_every=1", "sampler.nfe=2", "device=cpu"]
# a random-weights stand-in for the real file, at the smallest input size (75) to keep the test short
FID = ["inception.resize=75", "inception.batch_size=16", "inception.reference_size=12"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("fid")
    register_configs()
    with initialize_config_dir(config_dir=str(pathlib.Path(CONF_DIR)), version_base=None):
        train(compose("config", overrides=["experiment=digits", *TINY]), str(base / "score"))
    torch.manual_seed(0)
    torch.save(FIDInceptionV3(resize=75).state_dict(), base / WEIGHTS_FILE_NAME)
    return base


@pytest.mark.slow
def test_sample_app_fid_recomputed_and_reference_cached(setup, tmp_path):
    weights, cache = setup / WEIGHTS_FILE_NAME, tmp_path / "cache"
    runs = []
    for k in range(2):
        out = tmp_path / f"s{k}"
        sample_main(["source=checkpoint", f"checkpoint={setup / 'score'}", "sampler=dpm_solver", "sampler.nfe=2",
                     "num_samples=10", "plot=false", "device=cpu", "metrics_seed=3", f"inception.weights={weights}",
                     f"inception.cache_dir={cache}", *FID, f"hydra.run.dir={out}"])
        runs.append(json.loads((out / "metrics.json").read_text()))
    assert [m["fid_reference_cached"] for m in runs] == [False, True]
    assert len(list(cache.iterdir())) == 1 and next(cache.iterdir()).name.startswith("digits-")
    assert runs[0]["fid"] == runs[1]["fid"] and runs[0]["kid"] == runs[1]["kid"]
    samples = torch.load(tmp_path / "s0" / "samples.pt", weights_only=True)
    net = load_inception(str(weights), resize=75)
    f_s = inception_features(net, samples)
    f_t = inception_features(net, build_dataset("digits").test[:12])
    want = frechet_distance_from_statistics(f_s.mean(0), torch.cov(f_s.T), f_t.mean(0), torch.cov(f_t.T))
    m = runs[0]
    assert m["fid"] == pytest.approx(float(want), rel=1e-5)
    mean, std = kid(f_t, f_s, subsets=10, subset_size=10, generator=torch.Generator().manual_seed(3))
    assert m["kid"] == pytest.approx(float(mean), rel=1e-4, abs=1e-9)
    assert (m["fid_num_samples"], m["fid_reference_size"], m["inception_resize"]) == (10, 12, 75)


@pytest.mark.slow
def test_eval_app_reports_fid_of_drawn_samples(setup, tmp_path):
    out = tmp_path / "e"
    eval_main(["source=checkpoint", f"checkpoint={setup / 'score'}", "num_test=2", "device=cpu", "dtype=float32",
               "likelihood.method=rk4", "likelihood.fixed_steps=2", "progress=false",
               f"inception.weights={setup / WEIGHTS_FILE_NAME}", f"inception.cache_dir={tmp_path / 'cache'}",
               "inception.num_samples=8", "inception.nfe=2", *FID, f"hydra.run.dir={out}"])
    rep = json.loads((out / "likelihood.json").read_text())["inception"]
    assert rep["fid"] > 0 and rep["fid_num_samples"] == 8 and rep["sampler"] == "dpm_solver"
    assert rep["fid_reference_size"] == 12 and rep["fid_reference_cached"] is False


@pytest.mark.slow
def test_missing_weights_file_is_one_line_before_sampling(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        sample_main(["source=checkpoint", f"checkpoint={setup / 'score'}", "num_samples=4", "device=cpu",
                     f"inception.weights={tmp_path / 'missing.pth'}", f"hydra.run.dir={tmp_path}"])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert WEIGHTS_FILE_NAME in msg and "inception.weights=" in msg and len(msg.strip().splitlines()) == 1
    assert not (tmp_path / "samples.pt").exists()


@pytest.mark.parametrize("app", ["sample", "eval"])
def test_fid_needs_image_checkpoints(app, tmp_path, capsys):
    main = sample_main if app == "sample" else eval_main
    with pytest.raises(SystemExit) as err:  # refused before the weights are even read
        main(["source=oracle", "problem=ring2d", "device=cpu", f"inception.weights={tmp_path / WEIGHTS_FILE_NAME}",
              f"hydra.run.dir={tmp_path}"])
    assert err.value.code == 2
    assert "needs source=checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "samples.pt").exists() and not (tmp_path / "likelihood.json").exists()


@pytest.mark.parametrize("override,field", [("inception.resize=64", "inception.resize"),
                                            ("inception.batch_size=0", "inception.batch_size"),
                                            ("inception.sampler=nope", "inception.sampler")])
def test_bad_inception_options_name_the_field(override, field, tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_main(["source=oracle", "problem=ring2d", override, f"hydra.run.dir={tmp_path}"])
    assert field in capsys.readouterr().err
