"""Every entry point as a user starts it, from a fresh working directory outside the repository.

* Each console script declared in setup.cfg (read here, so a new one is picked up) is run as the
  installed executable next to `sys.executable`: `--help`, and one tiny real run whose outputs are
  checked for sensible values (NFE spent as asked, finite distances near their noise floor, a
  likelihood close to the exact one, which is itself checked against the Gaussian's entropy).
* The same through `python -m sde_gen.<app>`, plus the forward-process demo.
* Bad input ends in one stderr line naming the field, exit code 2, for errors raised by the app
  (ConfigError, CheckpointError) and by Hydra while composing; `HYDRA_FULL_ERROR=1` shows the
  traceback.
* `sde-gen-report` names and skips unreadable runs, and fails in one line when none is left.
* A sweep job's folder name cannot leave the sweep folder, whatever the override values.

The subprocesses start together on a small thread pool (each is its own process, so two at a time
use two cores); each test waits for its own. The settings are the smallest that still mean
something.
"""
import csv
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from sde_gen import load_trained, make_preset
from sde_gen.apps._hydra import safe_dirname
from sde_gen.apps.evaluate import main as eval_main
from sde_gen.apps.report import main as report_main
from sde_gen.apps.sample import main as sample_main
from sde_gen.apps.sample import run as sample_run
from sde_gen.apps.train import main as train_main
from sde_gen.config import CONF_DIR, register_configs

from .test_docs import APP_CONFIGS, _console_scripts
from .test_train import TINY

#: the <date>_<time> of every run and sweep folder
_DATE_TIME = r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}"

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
SCRIPTS = _console_scripts()  # name -> "module:function"


def _shim(script):
    """`python -m` module of a console script: sde_gen.apps.evaluate:main -> sde_gen.evaluate."""
    return "sde_gen." + SCRIPTS[script].split(":")[0].rsplit(".", 1)[-1]


# one tiny real run per app (a new console script must add its own here)
SAMPLE_ARGS = ["problem=ring2d", "sampler=dpm_solver", "sampler.nfe=10", "num_samples=300",
               "noise_floor_replicates=3", "num_projections=32", "device=cpu"]
EVAL_ARGS = ["source=oracle", "problem=gaussian16d", "sde=vp", "num_test=64", "likelihood.method=rk4",
             "likelihood.fixed_steps=10", "progress=false", "device=cpu"]
TRAIN_ARGS = [*TINY, "train.steps=2"]
RUN_ARGS = {"sde-gen-train": TRAIN_ARGS, "sde-gen-sample": SAMPLE_ARGS, "sde-gen-eval": EVAL_ARGS}
# the report runs on the output of another app's run (see test_report_runs)
REPORT_ON = {"console": ("sde-gen-sample", "console"), "module": ("sde-gen-train", "console")}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # the code under test is this checkout, whatever the environment has installed
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", **extra)
    return env


def _argv(script, form):
    if form == "console":
        exe = BIN / script
        assert exe.exists(), f"{exe} is not installed: pip install -e . declares the console scripts"
        return [str(exe)]
    return [sys.executable, "-m", _shim(script) if script in SCRIPTS else script]


def _run(argv, cwd, env=None, timeout=300):
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


class _Procs:
    """Named subprocesses started on a thread pool; `procs[name]` waits for one and returns
    (CompletedProcess, its working directory)."""

    def __init__(self, base):
        self.base = base
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
        self.futures = {}

    def cwd(self, name):
        return self.base / name.replace(" ", "_").replace(":", "_")

    def start(self, name, argv, env=None):
        self.futures[name] = (self.pool.submit(_run, argv, self.cwd(name), env), self.cwd(name))

    def start_after(self, name, after, argv):
        """Start `name` once `after` has finished (without holding a pool thread meanwhile)."""
        done = Future()

        def launch(_):
            try:
                inner = self.pool.submit(_run, argv, self.cwd(name))
            except RuntimeError as err:  # the pool was shut down: nobody waits for this one
                done.set_exception(err)
                return
            inner.add_done_callback(lambda f: done.set_exception(f.exception()) if f.exception() else done.set_result(f.result()))

        self.futures[after][0].add_done_callback(launch)
        self.futures[name] = (done, self.cwd(name))

    def __getitem__(self, name):
        future, cwd = self.futures[name]
        return future.result(), cwd


FORMS = ["console", "module"]
CORRUPT_CKPT = "ckpt_000002.pt"


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    base = tmp_path_factory.mktemp("entry")
    corrupt = base / "corrupt_run" / "checkpoints" / CORRUPT_CKPT
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"garbage\n")  # torch.load's complaint about it spans several lines
    p = _Procs(base)
    # the real runs first: they take longest
    for form in FORMS:
        for script, args in RUN_ARGS.items():
            p.start(f"run {form} {script}", _argv(script, form) + args)
    p.start("run module demo", _argv("sde_gen.demo", "module") + ["--out", str(base / "demo_out"), "--n", "2000"])
    p.start("sweep", _argv("sde-gen-sample", "console") + [
        "-m", "checkpoint=../../../../../escape,/abs/path", "problem=ring2d", "num_samples=50", "sampler.nfe=3",
        "noise_floor_replicates=2", "num_projections=8", "plot=false", "device=cpu"])
    for form in FORMS:
        for script in SCRIPTS:
            p.start(f"help {form} {script}", _argv(script, form) + ["--help"])
    # one-line errors through the real executables (more cases run in-process below)
    p.start("err nfe", _argv("sde-gen-sample", "console") + ["sampler.nfe=0", "device=cpu"])
    p.start("err corrupt", _argv("sde-gen-eval", "console") + ["source=checkpoint", f"checkpoint={corrupt}", "device=cpu"])
    p.start("err compose", _argv("sde-gen-train", "console") + ["sampler=nonexistent"])
    p.start("err module", _argv("sde-gen-eval", "module") + ["likelihood.divergence=foo"])
    p.start("full error", _argv("sde-gen-sample", "console") + ["sampler.nfe=0", "device=cpu"], env=_env(HYDRA_FULL_ERROR="1"))
    for form, (script, source_form) in REPORT_ON.items():
        source = f"run {source_form} {script}"
        p.start_after(f"run {form} sde-gen-report", source,
                      _argv("sde-gen-report", form) + [str(p.cwd(source) / "outputs"), "--out", str(base / f"report_{form}")])
    yield p
    p.pool.shutdown(wait=True)


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"


def _one_run_dir(app_dir, filename):
    """The single run folder holding `filename`, directly below `app_dir` (outputs/<app>) and named
    <date>_<time>: the one output layout of every app."""
    found = sorted(app_dir.rglob(filename))
    assert len(found) == 1, f"expected one {filename} under {app_dir}, found {found}"
    run_dir = found[0].parent
    assert run_dir.parent == app_dir and re.fullmatch(_DATE_TIME, run_dir.name), run_dir
    return run_dir


# ---------------------------------------------------------------- declared and installed
def test_console_scripts_are_declared_installed_and_covered():
    assert {"sde-gen-train", "sde-gen-sample", "sde-gen-eval", "sde-gen-report", "sde-gen-export"} <= set(SCRIPTS)
    for name, target in SCRIPTS.items():
        assert (BIN / name).exists(), f"{name} not installed next to {sys.executable}"
        # the report runs on another app's output (below), the export on a training run (tests/test_export.py)
        assert name in RUN_ARGS or name in ("sde-gen-report", "sde-gen-export"), f"{name}: add a tiny real run to RUN_ARGS"
        module = __import__(target.split(":")[0], fromlist=["_"])
        assert callable(getattr(module, target.split(":")[1])), target
        assert (REPO / (_shim(name).replace(".", "/") + ".py")).exists(), f"no `python -m {_shim(name)}` for {name}"


# ---------------------------------------------------------------- --help
def _config_groups(config_name):
    """Config groups of an app's defaults list (e.g. sde, sampler); the app's part of an experiment
    (`optional app_experiment/<app>`) follows `experiment=` and is no group of its own."""
    defaults = OmegaConf.load(pathlib.Path(CONF_DIR) / f"{config_name}.yaml").get("defaults", [])
    keys = [next(iter(d)) for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)]
    return [k for k in keys if not k.startswith("optional app_experiment/")]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help(procs, script, form):
    proc, _ = procs[f"help {form} {script}"]
    _ok(proc)
    out = proc.stdout
    assert "usage" in out.lower() and script in out, out[:2000]
    if script in APP_CONFIGS:
        assert "== Configuration groups ==" in out
        listed = [line.split(":")[0] for line in out.splitlines() if ": " in line]
        for group in _config_groups(APP_CONFIGS[script]):
            assert group in listed, f"{script} --help does not list the group {group!r}"
        assert "_hydra" not in out, "the Hydra job must be named after the app"


# ---------------------------------------------------------------- real runs
@pytest.mark.parametrize("form", FORMS)
def test_train_runs(procs, form):
    proc, cwd = procs[f"run {form} sde-gen-train"]
    _ok(proc)
    assert "trained 2 steps" in proc.stdout
    run_dir = _one_run_dir(cwd / "outputs" / "train", "metrics.csv")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    final = rows[-1]
    assert int(float(final["step"])) == 2
    assert 0 < float(final["sw2"]) < math.inf and float(final["sw2_floor_mean"]) > 0
    assert (run_dir / "config_resolved.yaml").exists() and (run_dir / "train.log").exists()
    trained = load_trained(str(run_dir), device="cpu")
    assert trained.step == 2
    x = torch.randn(8, 2, dtype=torch.float32)
    assert torch.isfinite(trained.model(x, torch.full((8,), 0.5))).all()


@pytest.mark.parametrize("form", FORMS)
def test_sample_runs(procs, form):
    proc, cwd = procs[f"run {form} sde-gen-sample"]
    _ok(proc)
    run_dir = _one_run_dir(cwd / "outputs" / "sample", "metrics.json")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["nfe_requested"] == 10 and m["nfe_spent"] == 10 and m["score_calls"] == 10
    assert m["num_samples"] == 300 and m["finite_fraction"] == 1.0 and m["sampler"] == "dpm_solver"
    # DPM-Solver++ with the exact score at 10 evaluations sits at the noise floor on the ring
    assert 0 < m["sw2"] < math.inf and m["sw2_ratio"] < 3, m
    samples = torch.load(run_dir / "samples.pt", weights_only=True)
    assert samples.shape == (300, 2) and torch.isfinite(samples).all()
    assert (run_dir / "samples.png").stat().st_size > 10_000 and (run_dir / "sample.log").exists()


@pytest.mark.parametrize("form", FORMS)
def test_eval_runs(procs, form):
    proc, cwd = procs[f"run {form} sde-gen-eval"]
    _ok(proc)
    run_dir = _one_run_dir(cwd / "outputs" / "eval", "likelihood.json")
    r = json.loads((run_dir / "likelihood.json").read_text())
    assert r["nfe"] == 40 and r["num_test"] == 64 and r["dim"] == 16  # rk4: 4 evaluations x 10 steps
    # the exact NLL of fresh points estimates the entropy of N(m, C): 0.5 log det(2 pi e C)
    cov = make_preset("gaussian16d").covariance().numpy()
    entropy_per_dim = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1] / 16
    exact = r["exact_nll_nats_per_dim"]
    assert abs(exact["mean"] - entropy_per_dim) < 5 * exact["std_error"], (exact, entropy_per_dim)
    # the model's NLL through the probability-flow ODE matches the exact one on the same points
    assert abs(r["model_minus_exact_nats_per_dim"]["mean"]) < 1e-2, r["model_minus_exact_nats_per_dim"]
    assert abs(r["model_nll_nats_per_dim"]["mean"] - exact["mean"]) < 1e-2


@pytest.mark.parametrize("form", FORMS)
def test_report_runs(procs, form):
    script, source_form = REPORT_ON[form]
    _ok(procs[f"run {source_form} {script}"][0])
    proc, _ = procs[f"run {form} sde-gen-report"]
    _ok(proc)
    out = procs.base / f"report_{form}"
    text = (out / "report.md").read_text()
    assert text in proc.stdout  # the table is also printed
    if script == "sde-gen-sample":
        assert "# Sampler report" in text and "| ring2d | vp | dpm_solver | 10 | 10 |" in text, text
        assert (out / "report.png").stat().st_size > 10_000
    else:
        row = [l for l in text.splitlines() if "| VPSDE |" in l]
        assert "# Training report" in text and len(row) == 1 and "| 2 |" in row[0], text  # 2 steps
        assert (out / "report_training.png").stat().st_size > 10_000


def test_demo_runs(procs):
    proc, _ = procs["run module demo"]
    _ok(proc)
    assert "agree with the oracle" in proc.stdout
    assert (procs.base / "demo_out" / "forward_sdes.png").stat().st_size > 10_000


# ---------------------------------------------------------------- one-line errors
def _assert_one_line(proc_or_err, *needles, prog=None):
    lines = proc_or_err.splitlines() if isinstance(proc_or_err, str) else proc_or_err.stderr.splitlines()
    assert len(lines) == 1, "expected one stderr line, got:\n" + "\n".join(lines[:60])
    line = lines[0]
    assert ": error: " in line and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    if prog is not None:
        assert line.startswith(f"{prog}: error: "), line
    return line


@pytest.mark.parametrize("name, needles, prog", [
    ("err nfe", ["nfe"], "sde-gen-sample"),                                   # ConfigError from the sampler
    ("err corrupt", ["checkpoint", CORRUPT_CKPT], "sde-gen-eval"),            # CheckpointError, corrupt file
    ("err compose", ["sampler/nonexistent", "heun"], "sde-gen-train"),        # Hydra composition error
    ("err module", ["divergence", "hutchinson"], "python -m sde_gen.evaluate"),
])
def test_errors_are_one_line_with_exit_code_2(procs, name, needles, prog):
    proc, _ = procs[name]
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _assert_one_line(proc, *needles, prog=prog)
    assert "_schema" not in line  # schemas are not choices
    assert proc.stdout == ""


def test_hydra_full_error_shows_the_traceback(procs):
    proc, _ = procs["full error"]
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr and "nfe must be" in proc.stderr


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """Run an app's main(argv) here: fresh Hydra state, no HYDRA_FULL_ERROR, outputs in tmp."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


CUDA_7 = pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")


@pytest.mark.parametrize("main, argv, needles", [
    (train_main, ["optimizer.lr=-1", "device=cpu"], ["lr", "-1"]),
    pytest.param(eval_main, ["device=cuda:7"], ["device", "cuda:7"], marks=CUDA_7),
    pytest.param(sample_main, ["device=cuda:7"], ["device", "cuda:7"], marks=CUDA_7),
    (sample_main, ["source=checkpoint", "checkpoint=/nonexistent", "device=cpu"], ["checkpoint", "/nonexistent"]),
    (sample_main, ["num_samplez=3"], ["num_samplez"]),
    (train_main, ["optimizer.lr=abc"], ["optimizer.lr", "abc"]),
    (eval_main, ["likelihood.fixed_steps=[1"], ["[1"]),
])
def test_errors_in_process_are_one_line(in_process, capsys, main, argv, needles):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    _assert_one_line(capsys.readouterr().err, *needles)
    assert "HYDRA_FULL_ERROR" not in os.environ  # the app's switch does not leak out of it


def test_full_error_in_process_raises_composition_errors(in_process, monkeypatch):
    from hydra.errors import MissingConfigException

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingConfigException):
        sample_main(["sampler=nonexistent"])
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


# ---------------------------------------------------------------- sde-gen-report on bad runs
@pytest.fixture(scope="module")
def good_metrics(tmp_path_factory):
    """metrics.json of a real, tiny sampling run (in-process)."""
    out = tmp_path_factory.mktemp("good_sample")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="sample", overrides=[
            "num_samples=100", "sampler.nfe=4", "noise_floor_replicates=2", "num_projections=8", "plot=false", "device=cpu"])
    GlobalHydra.instance().clear()
    sample_run(cfg, str(out), {"sampler": "euler_maruyama", "sde": "vp"})
    return (out / "metrics.json").read_text()


def _bad_tree(root, good):
    (root / "0_good").mkdir(parents=True)
    (root / "0_good" / "metrics.json").write_text(good)
    (root / "1_truncated").mkdir()
    (root / "1_truncated" / "metrics.json").write_text(good[: len(good) // 2])
    (root / "2_folder" / "metrics.json").mkdir(parents=True)  # found by the glob, cannot be read
    (root / "3_list").mkdir()
    (root / "3_list" / "metrics.json").write_text("[1, 2]")
    (root / "4_binary").mkdir()
    (root / "4_binary" / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
    (root / "5_train").mkdir()
    (root / "5_train" / "metrics.csv").write_text('step,sw2\n2,"not a number"\n')
    (root / "5_train" / "config_resolved.yaml").write_text("sde: {_target_: a.VPSDE}\n")
    return ["1_truncated", "2_folder", "3_list", "4_binary", "5_train"]


def test_report_names_and_skips_unreadable_runs(tmp_path, capsys, good_metrics):
    root = tmp_path / "sweep"
    bad = _bad_tree(root, good_metrics)
    assert report_main([str(root)]) == 0
    captured = capsys.readouterr()
    warnings = [l for l in captured.err.splitlines() if l]
    assert len(warnings) == len(bad), captured.err
    for name, line in zip(bad, warnings):
        assert line.startswith("sde-gen-report: warning: skipping ") and name in line, line
    text = (root / "report.md").read_text()
    assert "1 runs under" in text and "`0_good`" in text and "1_truncated" not in text


def test_report_with_nothing_readable_fails_in_one_line(tmp_path, capsys, good_metrics):
    root = tmp_path / "sweep"
    bad = _bad_tree(root, good_metrics)
    shutil.rmtree(root / "0_good")
    with pytest.raises(SystemExit) as exc:
        report_main([str(root)])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(bad) + 1 and all("warning" in l for l in lines[:-1])
    _assert_one_line(lines[-1], "root", "no readable", prog="sde-gen-report")
    assert not (root / "report.md").exists()


@pytest.mark.parametrize("case", ["no such root", "out is a file"])
def test_report_errors_are_one_line(tmp_path, capsys, good_metrics, case):
    root = tmp_path / "runs"
    (root / "0").mkdir(parents=True)
    (root / "0" / "metrics.json").write_text(good_metrics)
    (tmp_path / "a_file").write_text("x")
    argv = [str(tmp_path / "missing")] if case == "no such root" else [str(root), "--out", str(tmp_path / "a_file" / "sub")]
    with pytest.raises(SystemExit) as exc:
        report_main(argv)
    assert exc.value.code == 2
    _assert_one_line(capsys.readouterr().err, "root" if case == "no such root" else "out", prog="sde-gen-report")


# ---------------------------------------------------------------- sweep folders
def test_sweep_job_folders_stay_inside_the_sweep_folder(procs):
    proc, cwd = procs["sweep"]
    _ok(proc)
    sweeps = sorted((cwd / "multirun" / "sample").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = sorted(p.parent for p in cwd.rglob("metrics.json"))
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs), jobs  # one folder level, inside
    for job in jobs:
        assert "/" not in job.name and ".." not in job.name
    # nothing was created outside the sweep folder, in the working directory or above it
    outside = [p for p in cwd.rglob("*") if sweep not in p.parents and p not in (sweep, sweep.parent, sweep.parent.parent)]
    assert outside == [] and not (procs.base / "escape").exists()


@pytest.mark.parametrize("config_name", sorted(p.stem for p in pathlib.Path(CONF_DIR).glob("*.yaml")))
def test_every_app_config_makes_safe_sweep_subdirs(config_name):
    """The resolved hydra.sweep.subdir of every primary config, for overrides full of path parts."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        # path-valued overrides: climbing (..), absolute (/)
        cfg = compose(config_name=config_name, overrides=["seed=1", "+evil=../../../x/../y", "+abs=/etc/z"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.job.num = 7
    subdir = str(cfg.hydra.sweep.subdir)
    assert subdir.startswith("7") and "/" not in subdir and ".." not in subdir and os.sep not in subdir, subdir
    sweep = pathlib.Path("/sweep")
    assert os.path.normpath(sweep / subdir).startswith(str(sweep) + os.sep)


@pytest.mark.parametrize("config_name,app", [("config", "train"), ("sample", "sample"), ("eval", "eval")])
def test_every_app_uses_the_one_output_layout(config_name, app):
    """outputs/<app>/<date>_<time> for a run, multirun/<app>/<date>_<time>/<n>_<overrides> for a sweep."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name=config_name, overrides=["seed=1"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.job.num = 3
        cfg.hydra.job.override_dirname = "seed=1"
    run, sweep = str(cfg.hydra.run.dir).split("/"), str(cfg.hydra.sweep.dir).split("/")
    assert run[:2] == ["outputs", app] and len(run) == 3 and re.fullmatch(_DATE_TIME, run[2]), run
    assert sweep[:2] == ["multirun", app] and len(sweep) == 3 and re.fullmatch(_DATE_TIME, sweep[2]), sweep
    assert str(cfg.hydra.sweep.subdir) == "3_seed=1"


@pytest.mark.parametrize("text", ["", "a=1", "../..", "..", ".", ".hidden", "x/../../y", "/abs/path", "a\\b",
                                  "k=[1, 2]", "é/ü", "a\x00b", "...", "a" * 500, "a/" * 200])
def test_safe_dirname_is_one_harmless_component(text, tmp_path):
    name = safe_dirname(text)
    assert "/" not in name and "\\" not in name and ".." not in name and "\x00" not in name
    assert not name.startswith(".") and len(name) <= 120
    assert name == safe_dirname(text)  # deterministic: the same overrides give the same folder
    if name:
        (tmp_path / name).mkdir()
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_dirname_keeps_long_names_apart():
    a, b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    assert safe_dirname(a) != safe_dirname(b) and len(safe_dirname(a)) == 120
    assert safe_dirname("sampler=heun,sampler.nfe=10") == "sampler=heun,sampler.nfe=10"  # readable when safe
