"""Checkpoints are data, not code; config schemas are not config options.

A real tiny checkpoint is trained once; copies of it get a tampered stored config (`builtins.open`,
`torch.load` of a pickle with `weights_only=False`, `numpy.savetxt`, `os.system`, and a module
`payload.py` placed in the run directory and imported through the working directory). Every
loader must refuse each one with an error naming the config key and the target, and the payload's
marker file must never appear: `load_trained`, the sample and eval apps in-process and as console
scripts (exit code 2, one stderr line), and training resume. The payloads are real: the control
test runs them by hand and sees their markers.

Then: what the check refuses besides foreign targets (Hydra keywords, nested targets,
interpolations, non-plain values), that trust comes only from the caller (`trusted_targets`,
`register_backbone`), and that the schema entries of the ConfigStore are neither listed by
`--help` nor selectable, while a misspelt key in a YAML file still fails at composition.
"""
import importlib
import os
import re
import pathlib
import subprocess
import sys

import pytest

from sde_gen.apps._hydra import _prog
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import nn

from sde_gen.apps import evaluate as eval_app
from sde_gen.apps import sample as sample_app
from sde_gen.apps import train as train_app
from sde_gen.checkpoint import CheckpointError, check_checkpoint_config, load_checkpoint, load_trained
from sde_gen.config import CONF_DIR, ConfigError, instantiate, register_configs, registered_targets, target_names
from sde_gen.nets import BACKBONES, ScoreModel, register_backbone
from sde_gen.sdes import VPSDE
from sde_gen.training import train

CONF = pathlib.Path(CONF_DIR)
REPO = CONF.parents[1]
BIN = pathlib.Path(sys.executable).parent

TINY = [
    "model.hidden=8", "model.depth=1", "model.time_embed_dim=8", "train.batch_size=16", "lr_scheduler.warmup=0",
    "train.eval_samples=16", "train.eval_projections=4", "train.noise_floor_replicates=2",
    "train.score_error_samples=8", "train.progress=false", "train.plots=false",
    "train.log_every=1", "sampler.nfe=2", "device=cpu",
]


@pytest.fixture(autouse=True)
def _fresh_hydra(monkeypatch):
    # the apps print one error line and exit 2 (HYDRA_FULL_ERROR=1 would re-raise instead)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A real one-step training run: (run directory, its checkpoint file)."""
    run = tmp_path_factory.mktemp("good_run")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "train.steps=1"])
    GlobalHydra.instance().clear()
    train(cfg, str(run))
    return run, run / "checkpoints" / "ckpt_0000001.pt"


def _write_run(good_ckpt, run_dir, edit):
    """A copy of the good checkpoint in `run_dir/checkpoints/` whose state `edit(state)` changed,
    written with plain `torch.save` as an attacker would (not through `save_checkpoint`)."""
    state = torch.load(good_ckpt, weights_only=True)
    edit(state)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    path = run_dir / "checkpoints" / "ckpt_0000001.pt"
    torch.save(state, path)
    return path


class _OpensOnUnpickle:
    """Unpickling this creates a file: what `torch.load(weights_only=False)` would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payloads(tmp, run_dir):
    """id -> (config section, stored node, marker file that appears if the payload runs)."""
    evil = tmp / "evil.pt"
    torch.save(_OpensOnUnpickle(str(tmp / "unpickled")), evil)
    (run_dir / "payload.py").write_text(
        f"open({str(tmp / 'imported')!r}, 'w').close()\n\ndef run(**kwargs):\n    return None\n"
    )
    return {
        "builtins.open": ("sde", {"_target_": "builtins.open", "_args_": [str(tmp / "opened"), "w"]}, tmp / "opened"),
        "torch.load": ("data", {"_target_": "torch.load", "f": str(evil), "weights_only": False}, tmp / "unpickled"),
        "numpy.savetxt": ("sde", {"_target_": "numpy.savetxt", "fname": str(tmp / "script.py"), "X": [[0.0]],
                                  "header": "import os"}, tmp / "script.py"),
        "os.system": ("sde", {"_target_": "os.system", "_args_": [f"touch {tmp / 'system'}"]}, tmp / "system"),
        "payload.run": ("model", {"_target_": "payload.run", "hidden": 8}, tmp / "imported"),
    }


PAYLOAD_IDS = ["builtins.open", "torch.load", "numpy.savetxt", "os.system", "payload.run"]


@pytest.fixture
def tampered(good_run, tmp_path, monkeypatch, request):
    """(checkpoint, section, target, marker) for payload `request.param`, the working directory
    set to the downloaded run directory and that directory importable (as with `python -c` or
    PYTHONPATH=.)."""
    run_dir = tmp_path / "downloaded_run"
    run_dir.mkdir()
    section, node, marker = _payloads(tmp_path, run_dir)[request.param]
    ckpt = _write_run(good_run[1], run_dir, lambda s: s["config"].__setitem__(section, node))
    monkeypatch.chdir(run_dir)
    monkeypatch.syspath_prepend(str(run_dir))
    monkeypatch.delitem(sys.modules, "payload", raising=False)
    yield ckpt, section, node["_target_"], marker
    sys.modules.pop("payload", None)


def _assert_names_key_and_target(text, section, target):
    assert f"config.{section}._target_" in text and repr(target) in text, text


# ---------------------------------------------------------------- the payloads are real
def _call_unguarded(node):
    """What `hydra.utils.instantiate` does with a node at its core (some Hydra builds add a partial
    block-list of targets on top; stock Hydra 1.3 does not): import the module the `_target_`
    names, then call the object with `_args_` and the other keys."""
    module_name, _, attr = node["_target_"].rpartition(".")
    target = getattr(importlib.import_module(module_name), attr)
    return target(*node.get("_args_", []), **{k: v for k, v in node.items() if k not in ("_target_", "_args_")})


@pytest.mark.parametrize("payload", PAYLOAD_IDS)
def test_control_each_payload_runs_when_called(good_run, tmp_path, monkeypatch, payload):
    """Called as a config instantiation calls it, every payload leaves its marker: the refusals
    below prevent a real effect."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    section, node, marker = _payloads(tmp_path, run_dir)[payload]
    monkeypatch.chdir(run_dir)
    monkeypatch.syspath_prepend(str(run_dir))
    monkeypatch.delitem(sys.modules, "payload", raising=False)
    try:
        _call_unguarded(node)
    finally:
        sys.modules.pop("payload", None)
    assert marker.exists()


# ---------------------------------------------------------------- every loader refuses every payload
@pytest.mark.parametrize("tampered", PAYLOAD_IDS, indirect=True)
def test_load_trained_refuses(tampered):
    ckpt, section, target, marker = tampered
    for path in (ckpt, ckpt.parents[1]):  # the file and its run directory
        with pytest.raises(CheckpointError) as info:
            load_trained(str(path))
        _assert_names_key_and_target(str(info.value), section, target)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(ckpt))
    assert not marker.exists()


def _one_error_line(capsys, prog):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.mark.parametrize("tampered", PAYLOAD_IDS, indirect=True)
@pytest.mark.parametrize("app", ["sample", "eval", "train_resume"])
def test_apps_refuse_in_one_line(tampered, app, tmp_path, capsys):
    ckpt, section, target, marker = tampered
    out = f"hydra.run.dir={tmp_path / 'out'}"
    prog = _prog()  # how the apps name the running command in their one-line errors
    with pytest.raises(SystemExit) as info:
        if app == "sample":
            sample_app.main(["source=checkpoint", f"checkpoint={ckpt}", "device=cpu", "plot=false", out])
        elif app == "eval":
            eval_app.main(["source=checkpoint", f"checkpoint={ckpt}", "device=cpu", "progress=false", out])
        else:  # the stored config of the run to resume is checked even though training builds from its own
            train_app.main([*TINY, "train.steps=2", f"train.resume={ckpt}", out])
    assert info.value.code == 2
    _assert_names_key_and_target(_one_error_line(capsys, prog), section, target)
    assert not marker.exists()
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("tampered, script, args", [
    ("os.system", "sde-gen-sample", ["sampler.nfe=2", "num_samples=8", "plot=false"]),
    ("payload.run", "sde-gen-eval", ["num_test=4", "progress=false"]),
], indirect=["tampered"])
def test_console_scripts_refuse_with_exit_code_2(tampered, script, args, tmp_path):
    ckpt, section, target, marker = tampered
    # PYTHONPATH "." makes the run directory importable, as a user's shell setting might
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}.", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [str(BIN / script), "source=checkpoint", f"checkpoint={ckpt}", "device=cpu", *args,
           f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ckpt.parents[1], env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
    _assert_names_key_and_target(lines[0], section, target)
    assert not marker.exists()


# ---------------------------------------------------------------- what else the check refuses
GOOD = {
    "seed": 0, "device": "cpu", "trusted_targets": [],
    "sde": {"_target_": "sde_gen.sdes.VPSDE", "beta_min": 0.1, "beta_max": 20.0},
    "model": {"_target_": "sde_gen.nets.mlp.MLP", "hidden": 8, "depth": 1},
    "data": {"_target_": "sde_gen.data.oracle.Ring2D", "num_test": 100},
    "sampler": {"_target_": "sde_gen.samplers.euler_maruyama.EulerMaruyama", "nfe": 2},
    "train": {"steps": 1, "lr": 1e-3, "grad_clip": None, "resume": None},
}


def _edited(path, value):
    """A deep copy of GOOD with the dotted `path` set to `value`."""
    cfg = OmegaConf.to_container(OmegaConf.create(GOOD))
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


@pytest.mark.parametrize("path, value, key", [
    ("sde._partial_", True, "config.sde._partial_"),
    ("sde._recursive_", False, "config.sde._recursive_"),
    ("sde._convert_", "all", "config.sde._convert_"),
    ("sde._args_", [{"_target_": "os.system", "_args_": ["true"]}], "config.sde._args_"),
    ("sde.beta_min", {"_target_": "sde_gen.sdes.VESDE"}, "config.sde.beta_min._target_"),  # nested, registered
    ("train._target_", "sde_gen.sdes.VPSDE", "config.train._target_"),  # not a component section
    ("_target_", "sde_gen.sdes.VPSDE", "config._target_"),
    ("sde._target_", "sde_gen.nets.mlp.MLP", "config.sde._target_"),  # registered, but not an SDE
    ("sde._target_", 3, "config.sde._target_"),
    ("sde.beta_min", "${oc.env:HOME}", "config.sde.beta_min"),
    ("train.extra", [1, "${now:%H}"], "config.train.extra[1]"),
    ("sde.beta_min", torch.tensor(0.1), "config.sde.beta_min"),
])
def test_check_refuses_non_plain_nodes_naming_the_key(path, value, key):
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_config(_edited(path, value))
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_registered_targets_and_every_shipped_yaml_pass_the_check():
    """Every `_target_` the shipped YAML files compose to is allowed, and so are the public
    re-export paths (`sde_gen.VPSDE`, `sde_gen.nets.MLP`, ...)."""
    check_checkpoint_config(GOOD)
    assert {"sde_gen.sdes.VPSDE", "sde_gen.VPSDE"} <= set(target_names(VPSDE))
    reexports = {"sde": "sde_gen.VPSDE", "model": "sde_gen.nets.MLP", "data": "sde_gen.data.Ring2D",
                 "sampler": "sde_gen.samplers.EulerMaruyama"}
    check_checkpoint_config({k: dict(v, _target_=reexports[k]) if k in reexports else v for k, v in GOOD.items()})
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for group in ("sde", "model", "data", "sampler"):
            for yaml in sorted((CONF / group).glob("*.yaml")):
                cfg = compose(config_name=None, overrides=[f"+{group}={yaml.stem}"])
                assert cfg[group]._target_ in registered_targets(group), (group, yaml.stem)
                check_checkpoint_config({group: OmegaConf.to_container(cfg[group], resolve=True)})


def test_custom_resolver_in_a_stored_config_never_runs(good_run, tmp_path):
    marker = tmp_path / "resolved"

    def resolver():
        marker.touch()
        return 0.1

    OmegaConf.register_new_resolver("sec_test_marker", resolver)
    try:
        ckpt = _write_run(good_run[1], tmp_path / "run", lambda s: s["config"]["sde"].__setitem__("beta_min", "${sec_test_marker:}"))
        with pytest.raises(CheckpointError, match=r"config\.sde\.beta_min: interpolation"):
            load_trained(str(ckpt))
        assert not marker.exists()
        OmegaConf.create({"x": "${sec_test_marker:}"}).x  # control: resolving would have run it
        assert marker.exists()
    finally:
        OmegaConf.clear_resolver("sec_test_marker")


@pytest.mark.parametrize("bad", ["os.system", [".payload.run"], ["/tmp/payload.py"], ["payload"], [3]])
def test_trusted_targets_must_be_a_list_of_dotted_paths(good_run, bad):
    with pytest.raises(ConfigError, match="trusted_targets"):
        load_trained(str(good_run[1]), trusted_targets=bad)


# ---------------------------------------------------------------- loading what should load
def test_untampered_checkpoint_loads_with_its_ema_weights(good_run):
    run, ckpt = good_run
    trained = load_trained(str(run))
    state = torch.load(ckpt, weights_only=True)
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    assert trained.step == 1 and type(trained.sde).__name__ == "VPSDE"


class LinearBackbone(nn.Module):
    """A backbone of the user's own: F(x, t) = W [x, t] + b."""

    def __init__(self, dim: int, gain: float = 1.0):
        super().__init__()
        self.gain = gain
        self.lin = nn.Linear(dim + 1, dim)

    def forward(self, x, t, y=None):
        return self.gain * self.lin(torch.cat([x.flatten(1), t[:, None]], 1)).reshape(x.shape)


CUSTOM = f"{LinearBackbone.__module__}.{LinearBackbone.__qualname__}"


@pytest.fixture
def custom_run(good_run, tmp_path):
    """A checkpoint of a LinearBackbone score model; the stored config even claims to trust it."""
    state = torch.load(good_run[1], weights_only=True)
    torch.manual_seed(3)
    sde = instantiate(OmegaConf.create(state["config"]["sde"]), "sde")
    model = ScoreModel(LinearBackbone(2, gain=0.5), sde, data_std=state["data_std"])

    def edit(s):
        s["config"]["model"] = {"_target_": CUSTOM, "gain": 0.5}
        s["config"]["trusted_targets"] = [CUSTOM]  # never read: trust is the caller's
        s["model"] = model.state_dict()
        s["ema"] = {**{f"module.{k}": v for k, v in model.state_dict().items()}, "n_averaged": torch.tensor(1)}

    return _write_run(good_run[1], tmp_path / "custom_run", edit), model


def test_own_backbone_loads_only_when_trusted_by_the_caller(custom_run):
    ckpt, model = custom_run
    with pytest.raises(CheckpointError) as info:
        load_trained(str(ckpt))
    _assert_names_key_and_target(str(info.value), "model", CUSTOM)
    x, t = torch.randn(6, 2), torch.linspace(0.1, 0.9, 6)
    trained = load_trained(str(ckpt), trusted_targets=[CUSTOM])
    assert isinstance(trained.model.backbone, LinearBackbone)
    torch.testing.assert_close(trained.model(x, t), model(x, t))
    assert CUSTOM not in registered_targets("model")
    try:
        register_backbone("linear_test", LinearBackbone)
        assert CUSTOM in registered_targets("model")
        torch.testing.assert_close(load_trained(str(ckpt)).model(x, t), model(x, t))
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("mlp", LinearBackbone)
    finally:
        BACKBONES.pop("linear_test", None)


def test_sample_app_trusted_targets_option(custom_run, tmp_path, capsys):
    ckpt, _ = custom_run
    common = ["source=checkpoint", f"checkpoint={ckpt}", "device=cpu", "plot=false", "num_samples=16",
              "sampler.nfe=2", "noise_floor_replicates=2", "num_projections=4"]
    with pytest.raises(SystemExit):
        sample_app.main([*common, f"hydra.run.dir={tmp_path / 'a'}"])
    assert CUSTOM in capsys.readouterr().err
    sample_app.main([*common, f"trusted_targets=[{CUSTOM}]", f"hydra.run.dir={tmp_path / 'b'}"])
    samples = torch.load(tmp_path / "b" / "samples.pt", weights_only=True)
    assert samples.shape == (16, 2) and torch.isfinite(samples).all()


# ---------------------------------------------------------------- schemas are not options
def _group_listing(help_text):
    """{group: [options]} from the "Configuration groups" block of Hydra's --help."""
    block = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    rows = [ln.split(":", 1) for ln in block.splitlines() if ":" in ln and not ln.startswith("Compose")]
    return {g.strip(): [o.strip() for o in opts.split(",")] for g, opts in rows}


def test_help_lists_exactly_the_yaml_options(capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(BIN / "sde-gen-train"), "--help"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listings = {"train": _group_listing(proc.stdout)}
    for name, app in (("sample", sample_app), ("eval", eval_app)):
        with pytest.raises(SystemExit):
            app.main(["--help"])
        listings[name] = _group_listing(capsys.readouterr().out)
    assert set(listings["train"]) == {"sde", "model", "data", "train", "loss", "optimizer", "lr_scheduler", "logger", "sampler",
                                      "experiment"}
    assert set(listings["sample"]) == {"sde", "sampler", "experiment"} and set(listings["eval"]) == {"sde", "experiment"}
    for app, groups in listings.items():
        assert "_schema" not in str(groups), (app, groups)
        for group, options in groups.items():
            files = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            if group == "experiment":  # shared by the apps: each lists the experiments it runs
                assert options == sorted(options) and set(options) <= set(files) and "none" in options, (app, options)
            else:
                assert options == files, (app, group)


def test_selecting_a_schema_is_refused_in_one_line(tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([str(BIN / "sde-gen-sample"), "sampler=heun_schema", "device=cpu",
                           f"hydra.run.dir={tmp_path / 'out'}"], env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "sampler/heun_schema" in lines[0] and "euler_maruyama" in lines[0] and "heun," in lines[0]
    assert not (tmp_path / "out").exists()
    prog = _prog()  # how the apps name the running command in their one-line errors
    for override in ("sde=vp_schema", "sde=sde_vp_schema", "train=train_schema", "model=model_mlp_schema"):
        with pytest.raises(SystemExit) as info:
            train_app.main([override, f"hydra.run.dir={tmp_path / 'out'}"])
        group = override.split("=")[0]
        line = _one_error_line(capsys, prog)
        bad = override.split("=")[1].split(",")[-1]
        assert info.value.code == 2 and f"{group}/{bad}" in line and "(choices: " in line, line
        assert "_schema" not in line.split("(choices: ")[1], line


def test_own_yaml_options_are_accepted_and_a_misspelt_key_in_a_yaml_fails_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "sde").mkdir()
    (tmp_path / "sde" / "mine.yaml").write_text("defaults:\n  - /sde_vp_schema\nbeta_max: 10.0\n")
    (tmp_path / "sde" / "typo.yaml").write_text("defaults:\n  - /sde_vp_schema\nbeta_mn: 1.0\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    sample_app.main(["--cfg", "job", search, "sde=mine"])
    assert "beta_max: 10.0" in capsys.readouterr().out
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException) as info:
        sample_app.main(["--cfg", "job", search, "sde=typo"])
    assert "beta_mn" in str(info.value) + str(info.value.__cause__)


def test_pc_run_with_nested_predictor_and_corrector_loads(tmp_path):
    """`pc` stores its predictor and corrector as nested `_target_` nodes: our own kinds load."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "train.steps=1", "sampler=pc", "sampler.nfe=4"])
    GlobalHydra.instance().clear()
    train(cfg, str(tmp_path))
    trained = load_trained(str(tmp_path))
    assert trained.step == 1
    stored = trained.config["sampler"]
    assert stored["predictor"]["_target_"].startswith("sde_gen.samplers.")
    assert stored["corrector"]["_target_"].startswith("sde_gen.samplers.")


@pytest.mark.parametrize("where", ["predictor", "corrector"])
@pytest.mark.parametrize("target", ["builtins.open", "os.system", "sde_gen.sdes.VESDE"])
def test_nested_component_outside_the_sampler_kinds_is_refused(where, target):
    from sde_gen.checkpoint import check_checkpoint_config

    config = {"sampler": {"_target_": "sde_gen.samplers.pc.PredictorCorrector", where: {"_target_": target}}}
    with pytest.raises(CheckpointError, match=rf"config\.sampler\.{where}\._target_: target '{re.escape(target)}'"):
        check_checkpoint_config(config)
    # the same node is accepted once the caller trusts it (never because the checkpoint says so)
    check_checkpoint_config(config, trusted_targets=[target])
