"""Discrete diffusion through the Hydra apps (issue 16, item 6): `sde-gen-train experiment=...` trains an
x_0-logit network with the library's loop (checkpoints are data, loaded weights_only; resume continues bit
for bit), `sde-gen-sample` draws token grids with the discrete samplers (NFE reported), `sde-gen-eval`
reports the negative ELBO in bits/dim; bad configs fail at start-up in one line. The app outputs are
compared with the same computation done here directly (load_discrete + sampler / nelbo with the same seed).
"""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import sde_gen.discrete as dd
from sde_gen.apps.evaluate import main as eval_main
from sde_gen.apps.sample import main as sample_main
from sde_gen.apps.train import main as train_main
from sde_gen.checkpoint import CheckpointError, checkpoint_kind, load_checkpoint, load_trained
from sde_gen.config import CONF_DIR, ConfigError, register_configs
from sde_gen.training import train

from .test_entry_points import BIN, _env, _ok

#: the smallest settings that still run every part (T = 8 steps, a 1-layer width-8 transformer)
TINY = ["model.width=8", "model.depth=1", "model.heads=2", "sde.num_timesteps=8", "train.batch_size=16",
        "train.eval_samples=8", "train.progress=false", "train.log_every=1", "lr_scheduler.warmup=1", "device=cpu"]


def _compose(*overrides):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 3-step absorbing digits run from the installed console script, in a fresh folder."""
    cwd = tmp_path_factory.mktemp("d3pm_train")
    argv = [str(BIN / "sde-gen-train"), "experiment=d3pm_digits_absorbing", *TINY, "train.steps=3",
            "train.eval_every=3", "train.checkpoint_every=3", "sampler.nfe=8", "hydra.run.dir=run"]
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    _ok(proc)
    assert "trained 3 steps" in proc.stdout and "bits_per_dim=" in proc.stdout, proc.stdout
    return cwd / "run"


def test_console_train_writes_a_loadable_discrete_checkpoint(trained_run):
    ckpt = trained_run / "checkpoints" / "ckpt_0000003.pt"
    state = load_checkpoint(str(ckpt))  # torch.load(weights_only=True) and the stored-config check
    assert state["config"]["sde"]["_target_"] == "sde_gen.discrete.AbsorbingProcess"
    assert checkpoint_kind(str(trained_run)) == "discrete"
    with pytest.raises(CheckpointError, match="discrete-diffusion model.*load_discrete"):
        load_trained(str(trained_run))
    tr = dd.load_discrete(str(trained_run))
    assert isinstance(tr.sde, dd.AbsorbingProcess) and tr.sde.T == 8 and tr.step == 3
    # the EMA weights of the file are the model's
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    for name, value in tr.model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert [int(float(r["step"])) for r in rows] == [3]
    row = rows[0]
    assert int(float(row["nfe"])) == 8 and int(float(row["elbo_nfe"])) == 8
    # the bound's parts add up, and the prior term is exactly 0 (all-mask at T under the MI schedule)
    parts = sum(float(row[k]) for k in ("prior_bpd", "diffusion_bpd", "reconstruction_bpd"))
    assert math.isclose(parts, float(row["bits_per_dim"]), rel_tol=1e-9) and float(row["prior_bpd"]) == 0
    assert (trained_run / "samples.png").stat().st_size > 1000


def test_sample_app_draws_the_samplers_tokens_with_its_nfe(trained_run, tmp_path, hydra_full_errors):
    out = tmp_path / "sample"
    sample_main(["source=checkpoint", f"checkpoint={trained_run}", "sampler=maskgit", "sampler.nfe=5",
                 "num_samples=12", "batch_size=8", "seed=3", "device=cpu", f"hydra.run.dir={out}"])
    samples = torch.load(out / "samples.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert samples.dtype == torch.long and samples.shape == (12, 1, 8, 8)
    assert int(samples.min()) >= 0 and int(samples.max()) < 17  # no mask token left
    assert metrics["nfe_requested"] == 5 and metrics["nfe_spent"] == 5 and metrics["num_batches"] == 2
    # the same sampler, seed and EMA model built here give the same tokens (batches 8 + 4, one generator)
    tr = dd.load_discrete(str(trained_run))
    g = torch.Generator().manual_seed(3)
    smp = dd.MaskGIT(nfe=5)
    again = torch.cat([smp(tr.sde, tr.model, shape=(b, 1, 8, 8), generator=g).samples for b in (8, 4)])
    assert torch.equal(samples, again)
    ref = dd.evaluation.marginal_tv_to(samples, tr.dataset.test, 17)
    assert metrics["marginal_tv"] == pytest.approx(ref) and (out / "samples.png").exists()


def test_eval_app_reports_the_elbo_in_bits_per_dim(trained_run, tmp_path, hydra_full_errors):
    out = tmp_path / "eval"
    eval_main(["source=checkpoint", f"checkpoint={trained_run}", "num_test=10", "batch_size=10", "seed=5",
               "device=cpu", f"hydra.run.dir={out}"])
    rep = json.loads((out / "likelihood.json").read_text())
    tr = dd.load_discrete(str(trained_run))
    x0 = tr.dataset.test[:10]
    direct = dd.nelbo(tr.sde, tr.model, x0, torch.Generator().manual_seed(5))
    assert rep["unit"] == "bits/dim" and rep["nfe"] == 8 and rep["num_test"] == 10
    assert rep["bits_per_dim"]["mean"] == pytest.approx(float(direct.bits_per_dim.mean()), rel=1e-12)
    assert rep["uniform_code_bits_per_dim"] == pytest.approx(math.log2(17))
    assert rep["independent_categorical_bits_per_dim"] == pytest.approx(tr.dataset.independent_bits_per_dim(x0))


def test_resume_continues_bit_for_bit(tmp_path):
    base = ["experiment=d3pm_digits_uniform", *TINY, "train.eval_every=100", "train.checkpoint_every=2",
            "train.plots=false", "sampler.nfe=2"]
    straight = train(_compose(*base, "train.steps=4"), str(tmp_path / "a"))
    train(_compose(*base, "train.steps=2"), str(tmp_path / "b"))
    resumed = train(_compose(*base, "train.steps=4", "train.resume=auto"), str(tmp_path / "b"))
    assert resumed["step"] == 4
    for (name, p), q in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q), name
    loss = lambda d: [r["loss"] for r in csv.DictReader(open(tmp_path / d / "loss.csv"))]  # noqa: E731
    assert loss("a") == loss("b") and len(loss("a")) == 4


@pytest.mark.parametrize("overrides, message", [
    (["experiment=d3pm_digits_uniform", "sde.num_classes=16"], r"sde.num_classes=16: data 'digits_tokens' holds token ids up to 16, outside \[0, 16\)"),
    (["experiment=d3pm_digits_absorbing", "sde.num_classes=16"], r"holds id 16, the mask token of sde=d3pm_absorbing"),
    (["experiment=d3pm_digits_uniform", "sde.num_classes=18"], r"sde.num_classes=18 does not match data 'digits_tokens', which has K = 17"),
    pytest.param(*(["experiment=d3pm_digits_uniform", "data.levels=4"], r"sde.num_classes=17 does not match .* K = 4 levels; set sde.num_classes=4"), marks=pytest.mark.slow),
    pytest.param(*(["experiment=d3pm_digits_uniform", "sampler=maskgit"], r"sampler: .*needs a process with a mask token"), marks=pytest.mark.slow),
    pytest.param(*(["experiment=d3pm_digits_uniform", "sampler=euler_maruyama"], r"discrete diffusion needs all three discrete"), marks=pytest.mark.slow),
    pytest.param(*(["model=token_transformer"], r"discrete diffusion needs all three discrete.*model._target_='sde_gen.discrete.TokenTransformer' \(discrete\)"), marks=pytest.mark.slow),
    pytest.param(*(["experiment=d3pm_digits_uniform", "loss=dsm"], r"loss: DenoisingScoreMatching trains a score model .* use loss=d3pm_hybrid"), marks=pytest.mark.slow),
    pytest.param(*(["experiment=d3pm_digits_uniform", "data=digits"], r"data: 'digits' is not token data"), marks=pytest.mark.slow),
    pytest.param(*(["experiment=d3pm_digits_uniform", "sde.num_classes=1"], r"num_classes must be an integer >= 2"), marks=pytest.mark.slow),
])
def test_bad_discrete_configs_fail_before_training(tmp_path, hydra_full_errors, overrides, message):
    tiny = TINY if overrides[0].startswith("experiment=") else ["device=cpu"]  # (TINY names discrete keys)
    with pytest.raises(ConfigError, match=message):
        train_main([*overrides, *tiny, f"hydra.run.dir={tmp_path}"])
    assert not (tmp_path / "checkpoints").exists()


def test_sampler_and_checkpoint_kinds_must_agree(trained_run, tmp_path, hydra_full_errors):
    with pytest.raises(ValueError, match="discrete sampler: it needs source=checkpoint"):
        sample_main(["sampler=d3pm_ancestral", "device=cpu", f"hydra.run.dir={tmp_path / 'a'}"])
    with pytest.raises(ValueError, match="use a discrete sampler, sampler=d3pm_ancestral or sampler=maskgit"):
        sample_main(["source=checkpoint", f"checkpoint={trained_run}", "device=cpu", f"hydra.run.dir={tmp_path / 'b'}"])
    with pytest.raises(ValueError, match="nfe must be <= the number of positions L = 64"):
        sample_main(["source=checkpoint", f"checkpoint={trained_run}", "sampler=maskgit", "sampler.nfe=65",
                     "device=cpu", f"hydra.run.dir={tmp_path / 'c'}"])
    assert not any((tmp_path / d / "samples.pt").exists() for d in "abc")


@pytest.mark.slow
def test_a_bad_config_is_one_stderr_line_from_python_m(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sde_gen.train", "experiment=maskgit_digits", "sde.num_classes=16",
                           "device=cpu"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mask token" in lines[0] and lines[0].startswith("python -m sde_gen.train: error:"), lines


@pytest.mark.slow
def test_every_discrete_experiment_through_console_and_module(tmp_path):
    """Each experiment for a few steps from the console script, then the sample and eval apps through
    `python -m`, in a fresh folder (the fast tests cover one experiment; this covers all of them)."""
    for exp, sampler in (("d3pm_digits_uniform", "d3pm_ancestral"), ("d3pm_digits_absorbing", "d3pm_ancestral"),
                         ("maskgit_digits", "maskgit"), ("d3pm_markov", "d3pm_ancestral")):
        cwd = tmp_path / exp
        cwd.mkdir()
        _ok(subprocess.run([str(BIN / "sde-gen-train"), f"experiment={exp}", *TINY, "train.steps=4", "train.eval_every=4",
                            "train.checkpoint_every=4", "sampler.nfe=4", "hydra.run.dir=run"],
                           cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600))
        _ok(subprocess.run([sys.executable, "-m", "sde_gen.sample", "source=checkpoint", "checkpoint=run", f"sampler={sampler}",
                            "sampler.nfe=4", "num_samples=16", "device=cpu", "hydra.run.dir=sample"],
                           cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600))
        proc = subprocess.run([sys.executable, "-m", "sde_gen.evaluate", "source=checkpoint", "checkpoint=run", "num_test=16",
                               "device=cpu", "hydra.run.dir=eval"], cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=600)
        _ok(proc)
        assert "test bits/dim" in proc.stdout and "baselines: uniform code" in proc.stdout
        assert json.loads((cwd / "sample" / "metrics.json").read_text())["nfe_spent"] == 4
        rep = json.loads((cwd / "eval" / "likelihood.json").read_text())
        if exp == "d3pm_markov":  # exact NLL of the same points next to the bound
            assert 0 < rep["exact_bits_per_dim"] < rep["bits_per_dim"]["mean"]
