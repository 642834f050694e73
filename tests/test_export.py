"""`sde-gen-export` / `export_trained`: a run's weights as safetensors and its config as YAML, loaded
back by `load_trained` with outputs identical to the checkpoint's, from the installed console script
in a temporary working directory (and `python -m sde_gen.export`)."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sde_gen import load_trained
from sde_gen.apps.export import main as export_main
from sde_gen.checkpoint import CheckpointError, export_trained
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.training import train

from .test_train import TINY

st = pytest.importorskip("safetensors.torch")

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _env():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real four-step training run (the raw and EMA weights differ)."""
    run = tmp_path_factory.mktemp("export_run")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "train.steps=4", "train.ema_decay=0.5"])
    GlobalHydra.instance().clear()
    train(cfg, str(run))
    return run


def _same_outputs(a, b):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 1e-3, 0.5, 1.0]).repeat(4)
    assert torch.equal(a.model(x, t), b.model(x, t))


def test_export_then_load_gives_identical_outputs(run_dir, tmp_path):
    """The installed console script (`python -m sde_gen.export` and both `--help`s run in
    tests/test_entry_points.py)."""
    exe = BIN / "sde-gen-export"
    assert exe.exists(), f"{exe} is not installed: pip install -e . declares the console script"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([str(exe), str(run_dir), "--out", "exported"], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = work / "exported"
    assert sorted(os.listdir(out)) == ["model.safetensors", "model.yaml"]
    meta = OmegaConf.to_container(OmegaConf.load(out / "model.yaml"))
    reference = load_trained(str(run_dir))
    assert meta["config"]["model"] == reference.config["model"] and meta["weights"] == "ema"
    assert meta["step"] == 4 and meta["event_shape"] == [2]
    # the safetensors file is the EMA network's state dict, tensor for tensor
    weights = st.load_file(str(out / "model.safetensors"))
    state = reference.model.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    for path in (out, out / "model.safetensors", out / "model.yaml"):
        loaded = load_trained(str(path), dataset=False)
        assert loaded.step == 4 and loaded.config == reference.config and not loaded.model.training
        _same_outputs(loaded, reference)


def test_raw_export_and_default_folder(run_dir):
    paths = export_trained(str(run_dir), ema=False)
    assert pathlib.Path(paths["weights"]).parent == run_dir / "export"
    raw = load_trained(str(run_dir / "export"), ema=False)
    _same_outputs(raw, load_trained(str(run_dir), ema=False))
    with pytest.raises(AssertionError):  # the EMA weights are another network
        _same_outputs(raw, load_trained(str(run_dir)))
    export_trained(str(run_dir), str(run_dir / "ema_export"))
    with pytest.raises(CheckpointError, match="ema=True"):
        load_trained(str(run_dir / "ema_export"), ema=False)


def test_export_is_checked_like_a_checkpoint(run_dir, tmp_path):
    out = tmp_path / "exp"
    export_trained(str(run_dir), str(out))
    with pytest.raises(CheckpointError, match="registered classes only"):
        load_trained(str(out), trusted_targets=["mypkg.Net"])
    meta = OmegaConf.load(out / "model.yaml")
    meta.config.model._target_ = "os.system"
    OmegaConf.save(meta, out / "model.yaml")
    with pytest.raises(CheckpointError, match=r"config\.model\._target_"):
        load_trained(str(out))
    (out / "model.yaml").write_text("format: 1\n")
    with pytest.raises(CheckpointError, match="not a sde_gen export"):
        load_trained(str(out))
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_trained(str(out))


@pytest.mark.parametrize("argv, needle", [(["{tmp}/nothing"], "no checkpoint"), (["{tmp}/bad"], "truncated or corrupt")])
def test_export_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, needle):
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bad" / "checkpoints" / "ckpt_0000002.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        export_main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sde-gen-export: error:") and needle in lines[0], lines
