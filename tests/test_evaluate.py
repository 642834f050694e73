"""The sde-gen-eval app: config validation at start-up, and correct likelihood.json (oracle source)."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from sde_gen import VESDE, make_preset
from sde_gen.config import ConfigError, register_configs
from sde_gen.apps.evaluate import run_eval

CONF = pathlib.Path(__file__).resolve().parents[1] / "sde_gen" / "conf"
ROOT = CONF.parents[1]


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


def test_oracle_source_writes_exact_and_model_likelihood(hydra_ctx, tmp_path):
    """gaussian16d with the exact p_T prior: model logp == exact data logp within 1e-4 nats/dim."""
    cfg = compose(
        config_name="eval",
        overrides=[
            "source=oracle", "problem=gaussian16d", "sde=subvp", "num_test=40", "batch_size=16",
            "device=cpu", "progress=false", "likelihood.prior=exact", "likelihood.t_min=1e-9",
            "likelihood.rtol=1e-6", "likelihood.atol=1e-6",
        ],
    )
    run_eval(cfg, str(tmp_path))
    report = json.loads((tmp_path / "likelihood.json").read_text())
    # recompute the test points and their exact log-density independently
    oracle = make_preset("gaussian16d")
    x = oracle.sample(40, torch.Generator().manual_seed(0), device="cpu", dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(oracle.mean(), oracle.covariance()).log_prob(x)
    assert report["unit"] == "nats" and report["dim"] == 16 and report["num_test"] == 40
    assert math.isclose(report["exact_logp_nats"]["mean"], float(exact.mean()), rel_tol=1e-9)
    assert math.isclose(report["exact_logp_nats"]["std_error"], float(exact.std() / math.sqrt(40)), rel_tol=1e-9)
    assert abs(report["model_minus_exact_nats_per_dim"]["mean"]) < 1e-4
    assert math.isclose(report["model_nll_nats_per_dim"]["mean"], -report["model_logp_nats"]["mean"] / 16, rel_tol=1e-9)
    assert report["nfe"] > 0 and report["config"]["sde"]["_target_"].endswith("SubVPSDE")


def test_app_runs_through_hydra_entry_point(tmp_path):
    """`python -m sde_gen.evaluate` with the standard prior on the ring (VE, fixed grid)."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "sde_gen.evaluate", "problem=ring2d", "sde=ve", "num_test=64",
        "device=cpu", "progress=false", "likelihood.fixed_steps=40", f"hydra.run.dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "likelihood.json").read_text())
    assert report["nfe"] == 4 * 40 and report["problem"] == "ring2d"
    # VE prior N(0, 50^2) vs p_T: mismatch tiny; rk4 on 40 steps: within 0.05 nats
    assert abs(report["model_minus_exact_nats"]["mean"]) < 0.05
    assert "nats/dim" in proc.stdout


@pytest.mark.parametrize(
    "override, field",
    [
        ("source=file", "source"),
        ("problem=moons", "problem"),
        ("num_test=0", "num_test"),
        ("batch_size=-3", "batch_size"),
        ("dtype=float16", "dtype"),
        ("likelihood.rtol=-1", "rtol"),
        ("likelihood.divergence=trace", "divergence"),
        ("likelihood.probe=uniform", "probe"),
        ("likelihood.method=rk45", "method"),
        ("likelihood.prior=flat", "prior"),
        ("likelihood.time_variable=sigma", "time_variable"),
        ("source=checkpoint", "checkpoint"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_field(hydra_ctx, tmp_path, override, field):
    cfg = compose(config_name="eval", overrides=[override, "device=cpu"])
    with pytest.raises(ConfigError, match=field):
        run_eval(cfg, str(tmp_path))
    assert not (tmp_path / "likelihood.json").exists()


def test_bad_sde_value_names_the_sde_field(hydra_ctx, tmp_path):
    cfg = compose(config_name="eval", overrides=["sde=ve", "sde.sigma_min=100", "device=cpu"])
    with pytest.raises(ConfigError, match=r"sde: .*sigma_min"):
        run_eval(cfg, str(tmp_path))


@pytest.mark.parametrize("override, field", [("likelihood.rtoll=1", "rtoll"), ("num_tests=5", "num_tests")])
def test_misspelt_keys_fail_at_composition(hydra_ctx, override, field):
    with pytest.raises(ConfigCompositionException) as info:
        compose(config_name="eval", overrides=[override])
    assert field in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("data", ["gaussian16d", "digits"])
def test_checkpoint_source_after_a_two_step_training(hydra_ctx, tmp_path, data):
    """A real (2-step) training run, then the app on its checkpoint: nats + exact oracle
    log-likelihood for oracle data, dequantised bits/dim for images; numbers match direct calls."""
    from sde_gen.checkpoint import load_trained
    from sde_gen.likelihood import bits_per_dim, log_likelihood
    from sde_gen.training import train

    run = tmp_path / "run"
    cfg = compose(
        config_name="config",
        overrides=[f"data={data}", "train.steps=2", "train.checkpoint_every=2", "train.eval_every=100",
                   "train.eval_samples=16", "train.batch_size=8", "device=cpu"],
    )
    train(cfg, str(run))
    ecfg = compose(
        config_name="eval",
        overrides=["source=checkpoint", f"checkpoint={run}", "num_test=6", "device=cpu",
                   "likelihood.fixed_steps=3", "progress=false"],
    )
    report = run_eval(ecfg, str(tmp_path))
    assert json.loads((tmp_path / "likelihood.json").read_text())["step"] == 2
    trained = load_trained(str(run))

    def score(x, t):
        return trained.model(x.float(), t.float()).double()

    if data == "digits":
        pixels = trained.dataset.test_pixels[:6]
        direct = bits_per_dim(trained.sde, score, pixels, trained.dataset, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64, fixed_steps=3)
        assert report["unit"] == "bits/dim" and report["num_levels"] == 17
        assert math.isclose(report["bits_per_dim"]["mean"], float(direct.mean), rel_tol=1e-6)
        assert report["bits_per_dim"]["mean"] > 0
    else:
        x = trained.dataset.test[:6].double()
        direct = log_likelihood(trained.sde, score, x, fixed_steps=3)
        exact = trained.dataset.oracle.log_prob(x)
        assert report["unit"] == "nats" and report["nfe"] == 12
        assert math.isclose(report["model_logp_nats"]["mean"], float(direct.logp.mean()), rel_tol=1e-6)
        assert math.isclose(report["exact_logp_nats"]["mean"], float(exact.mean()), rel_tol=1e-9)


def test_undefined_standard_errors_are_null_not_nan(hydra_ctx, tmp_path):
    """One test point and one Hutchinson probe: no spread to measure; the JSON stays strict."""
    cfg = compose(
        config_name="eval",
        overrides=["problem=ring2d", "num_test=1", "device=cpu", "progress=false", "likelihood.divergence=hutchinson",
                   "likelihood.fixed_steps=2"],
    )
    run_eval(cfg, str(tmp_path))

    def reject(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    report = json.loads((tmp_path / "likelihood.json").read_text(), parse_constant=reject)
    assert report["model_logp_nats"]["std_error"] is None and report["hutchinson_std_error_mean"] is None
    assert math.isfinite(report["model_logp_nats"]["mean"]) and report["nfe"] == 8
