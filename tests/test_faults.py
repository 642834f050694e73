"""Fault injection: a training run that is killed (SIGKILL), interrupted (SIGINT, SIGTERM), that
diverges, or that finds its checkpoint folder unusable or its disk full loses nothing.

The reference for every interrupted run is the same run left alone: after `train.resume=auto` the
final model, EMA, optimiser and RNG states must be equal bit for bit, and `loss.csv` and
`metrics.csv` equal as text. The signal tests start real `python -m sde_gen.train` processes; a
small wrapper (`_CHILD`, written next to the run) injects the fault at a chosen step or save, so
the point is exact rather than a race, and one test signals from outside the process.
"""
import errno
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import sde_gen.checkpoint as ck
from sde_gen.apps.train import main as train_main
from sde_gen.checkpoint import CheckpointError, load_checkpoint, load_trained, save_checkpoint
from sde_gen.config import CONF_DIR, ConfigError, register_configs
from sde_gen.losses import DenoisingScoreMatching
from sde_gen.training import TrainingDiverged, TrainingInterrupted, train

from .test_train import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30
# checkpoints every 7 steps and loss rows every 5: a resume starts inside a log interval, so the
# loss accumulators must travel in the checkpoint for loss.csv to come out the same
FAULT = [o for o in TINY if not o.startswith("train.log_every")] + [
    f"train.steps={STEPS}", "train.log_every=5", "train.checkpoint_every=7", "train.eval_every=1000",
    "train.keep_checkpoints=2", "train.resume=auto",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks gain nothing from threads, and on a loaded machine OpenMP threads waiting
    for each other make them several times slower (the child processes get OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compose(*overrides):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def app(monkeypatch):
    """In-process `sde-gen-train` with its own one-line errors; the logging Hydra sets up (handlers
    on this test's captured streams) is undone afterwards."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    handlers, level = logging.root.handlers[:], logging.root.level
    GlobalHydra.instance().clear()
    yield train_main
    GlobalHydra.instance().clear()
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _ckpts(run_dir):
    folder = os.path.join(run_dir, "checkpoints")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------- real processes, real signals
_CHILD = r'''
"""The training app with one fault: `<kind>:<step>:<signal>` as the first argument.

loss:K:SIG   send SIG to this process while step K computes its loss (its batch is already drawn)
save:K:SIG   send SIG right after the checkpoint of step K is written to its temporary file
pause:K:-    while step K computes its loss, create ./paused and sleep (the test signals from outside)
"""
import os, signal, sys, time

import torch

from sde_gen.checkpoint import latest_checkpoint, load_checkpoint
from sde_gen.losses import DenoisingScoreMatching

kind, at, sig = sys.argv[1].split(":")
at = int(at)
run_dir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.run.dir=")][0]
found = latest_checkpoint(run_dir)
step = int(load_checkpoint(found)["step"]) if found else 0  # steps done before this process
forward = DenoisingScoreMatching.forward
save = torch.save


def fire():
    if kind == "pause":
        open("paused", "w").close()
        time.sleep(1.5)  # a handled signal does not cut this short (PEP 475)
    else:
        os.kill(os.getpid(), getattr(signal, sig))


def faulty_forward(self, *args, **kwargs):
    global step
    step += 1
    loss = forward(self, *args, **kwargs)
    if step == at and kind in ("loss", "pause"):
        fire()
    return loss


def faulty_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if kind == "save" and isinstance(obj, dict) and obj.get("step") == at:
        fire()


DenoisingScoreMatching.forward = faulty_forward
torch.save = faulty_save
from sde_gen.apps.train import main

main(sys.argv[2:])
'''


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    env.pop("HYDRA_FULL_ERROR", None)  # the app's own one-line messages and exit codes
    return env


def _start(cwd, fault=None):
    """A training process in `cwd` (run directory `cwd/run`), with `fault` injected by `_CHILD`."""
    args = [*FAULT, f"hydra.run.dir={cwd / 'run'}"]
    if fault is None:
        cmd = [sys.executable, "-m", "sde_gen.train", *args]
    else:
        (cwd / "fault_child.py").write_text(_CHILD)
        cmd = [sys.executable, str(cwd / "fault_child.py"), fault, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _run(cwd, fault=None):
    return _finish(_start(cwd, fault))


def _same(a, b, where=""):
    """Bit-for-bit equality of nested checkpoint contents (tensors, dicts, lists, numbers)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: its final checkpoint, loss.csv and metrics.csv."""
    cwd = tmp_path_factory.mktemp("straight")
    rc, out = _run(cwd)
    assert rc == 0, out[-3000:]
    run = cwd / "run"
    return {"state": load_checkpoint(str(run / "checkpoints" / f"ckpt_{STEPS:07d}.pt")),
            "loss": (run / "loss.csv").read_text(), "metrics": (run / "metrics.csv").read_text()}


def _assert_same_as_straight(run, straight):
    state = load_checkpoint(str(run / "checkpoints" / f"ckpt_{STEPS:07d}.pt"))
    for part in ("step", "model", "ema", "optimizer", "rng", "accumulators"):
        _same(state[part], straight["state"][part], part)
    _same(state["metrics"]["loss"], straight["state"]["metrics"]["loss"], "metrics.loss")
    assert (run / "loss.csv").read_text() == straight["loss"]
    assert (run / "metrics.csv").read_text() == straight["metrics"]
    assert (run / "timing.csv").read_text().startswith("step,steps_per_s")


def _resume_and_compare(tmp_path, straight):
    rc, out = _run(tmp_path)
    assert rc == 0, out[-3000:]
    assert not [f for f in _ckpts(tmp_path / "run") if f.endswith(".tmp")]
    _assert_same_as_straight(tmp_path / "run", straight)


def test_sigkill_during_a_checkpoint_save_leaves_a_temp_file_that_resume_removes(tmp_path, straight):
    rc, out = _run(tmp_path, "save:14:SIGKILL")
    assert rc == -signal.SIGKILL, out[-3000:]
    files = _ckpts(tmp_path / "run")
    assert "ckpt_0000007.pt" in files and "ckpt_0000014.pt" not in files
    assert [f for f in files if f.startswith(".ckpt_0000014.pt.") and f.endswith(".tmp")], files  # the killed save
    _resume_and_compare(tmp_path, straight)


def test_sigint_mid_step_saves_at_the_step_boundary_and_resumes_bit_identically(tmp_path, straight):
    rc, out = _run(tmp_path, "loss:17:SIGINT")
    assert rc == 130, out[-3000:]
    assert "interrupted by SIGINT after step 17" in out and "Traceback" not in out
    run = tmp_path / "run"
    assert _ckpts(run)[-1] == "ckpt_0000017.pt"
    assert [line.split(",")[0] for line in (run / "loss.csv").read_text().splitlines()[1:]] == ["5", "10", "15"]
    _resume_and_compare(tmp_path, straight)


@pytest.mark.slow
@pytest.mark.parametrize("faults", [
    ["loss:17:SIGKILL"],                                   # after a few steps: resume from step 14
    ["loss:17:SIGTERM"],
    ["save:14:SIGINT"],                                    # during a save: it completes, then the run stops
    ["save:14:SIGTERM"],
    ["loss:1:SIGINT"],                                     # before the first checkpoint
    ["loss:3:SIGKILL", "loss:9:SIGTERM", "save:21:SIGKILL", "loss:25:SIGINT"],  # one fault after another
], ids=lambda f: "+".join(f))
def test_faults_at_many_points_then_resume_bit_identically(tmp_path, straight, faults):
    expected = {"SIGKILL": -signal.SIGKILL, "SIGINT": 130, "SIGTERM": 143}
    for fault in faults:
        rc, out = _run(tmp_path, fault)
        assert rc == expected[fault.rsplit(":", 1)[1]], (fault, out[-3000:])
    _resume_and_compare(tmp_path, straight)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_signal_from_outside_the_process(tmp_path, straight, sig):
    proc = _start(tmp_path, "pause:17:-")
    deadline = time.monotonic() + 120
    while not (tmp_path / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline, _finish(proc)[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    rc, out = _finish(proc)
    assert rc == {"SIGKILL": -signal.SIGKILL, "SIGINT": 130, "SIGTERM": 143}[sig], out[-3000:]
    if sig != "SIGKILL":
        assert _ckpts(tmp_path / "run")[-1] == "ckpt_0000017.pt"
    _resume_and_compare(tmp_path, straight)


# ---------------------------------------------------------------- signals, in-process
def _fire_at(monkeypatch, calls_to_signals):
    """Make the loss of the given steps send signals to this process (mid-step)."""
    forward, count = DenoisingScoreMatching.forward, [0]

    def patched(self, *args, **kwargs):
        count[0] += 1
        loss = forward(self, *args, **kwargs)
        for sig in calls_to_signals.get(count[0], ()):
            os.kill(os.getpid(), sig)
        return loss

    monkeypatch.setattr(DenoisingScoreMatching, "forward", patched)


def test_in_process_sigint_restores_the_handlers_and_resume_matches(tmp_path, monkeypatch):
    over = [*FAULT, "train.steps=12", "train.checkpoint_every=100"]
    straight = train(_compose(*over), str(tmp_path / "a"))
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _fire_at(monkeypatch, {8: [signal.SIGTERM]})
    with pytest.raises(TrainingInterrupted) as info:
        train(_compose(*over), str(tmp_path / "b"))
    assert (info.value.signum, info.value.step, info.value.exit_code) == (signal.SIGTERM, 8, 143)
    assert info.value.checkpoint.endswith("ckpt_0000008.pt") and _ckpts(tmp_path / "b") == ["ckpt_0000008.pt"]
    assert {s: signal.getsignal(s) for s in before} == before
    monkeypatch.undo()
    resumed = train(_compose(*over), str(tmp_path / "b"))
    _same(resumed["model"].state_dict(), straight["model"].state_dict(), "model")
    _same(resumed["ema"].state_dict(), straight["ema"].state_dict(), "ema")
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_a_second_signal_interrupts_at_once_without_saving(tmp_path, monkeypatch):
    _fire_at(monkeypatch, {4: [signal.SIGINT, signal.SIGINT]})
    with pytest.raises(KeyboardInterrupt) as info:
        train(_compose(*FAULT, "train.checkpoint_every=100"), str(tmp_path))
    assert not isinstance(info.value, TrainingInterrupted)
    assert [f for f in _ckpts(tmp_path) if not f.startswith(".")] == []


# ---------------------------------------------------------------- non-finite steps
def _nan_at(monkeypatch, bad_calls, record=None):
    """The loss of the given steps (1-based calls) becomes NaN; `record` collects the finite ones."""
    forward, count = DenoisingScoreMatching.forward, [0]

    def patched(self, *args, **kwargs):
        count[0] += 1
        loss = forward(self, *args, **kwargs)
        if bad_calls(count[0]):
            return loss * float("nan")
        if record is not None:
            record.append(loss.detach().clone())
        return loss

    monkeypatch.setattr(DenoisingScoreMatching, "forward", patched)


def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    losses = []
    _nan_at(monkeypatch, lambda k: k in (3, 9, 10), losses)
    over = [*FAULT, "train.steps=12", "train.checkpoint_every=1", "train.keep_checkpoints=20", "train.max_bad_steps=3"]
    out = train(_compose(*over), str(tmp_path))
    assert out["skipped_steps"] == 3
    rows = [line.split(",") for line in (tmp_path / "loss.csv").read_text().splitlines()]
    assert rows[0] == ["step", "loss", "lr", "skipped"]
    assert [(r[0], r[3]) for r in rows[1:]] == [("5", "1"), ("10", "2"), ("12", "0")]
    # the logged mean is over the finite steps only (accumulated in float32, like the loop)
    acc = torch.zeros(())
    for loss in losses[:4]:
        acc += loss
    assert float(rows[1][1]) == pytest.approx(float(acc) / 4, rel=1e-6)
    # the checkpoint due after the skipped step 3 waited for the good step 4
    assert "ckpt_0000003.pt" not in _ckpts(tmp_path) and "ckpt_0000004.pt" in _ckpts(tmp_path)


def test_a_skipped_step_changes_no_weight_no_ema_and_no_optimiser_state(tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda k: k == 3)
    train(_compose(*FAULT, "train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=5"), str(tmp_path))
    s2, s3 = (load_checkpoint(str(tmp_path / "checkpoints" / f"ckpt_{k:07d}.pt")) for k in (2, 3))  # 3: the final save
    for part in ("model", "ema"):
        _same(s3[part], s2[part], part)
    _same(s3["optimizer"]["state"], s2["optimizer"]["state"], "optimizer.state")  # moments and Adam's step count
    assert not torch.equal(s3["rng"]["train"], s2["rng"]["train"])  # the bad step drew its batch
    assert s3["metrics"]["loss"][-1]["skipped"] == 1 and s3["accumulators"]["bad_streak"] == 1


def test_divergence_stops_after_max_bad_steps_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda k: k >= 8)
    over = [*FAULT, "train.steps=40", "train.checkpoint_every=3", "train.keep_checkpoints=1", "train.max_bad_steps=4"]
    with pytest.raises(TrainingDiverged, match=r"steps 8-11 .*train\.max_bad_steps=4.*ckpt_0000006\.pt") as info:
        train(_compose(*over), str(tmp_path))
    assert "\n" not in str(info.value)
    # the checkpoint due at step 9 (a skipped step) was never written, so rotation kept step 6
    assert _ckpts(tmp_path) == ["ckpt_0000006.pt"]
    assert not ck.nonfinite_weights(load_checkpoint(str(tmp_path / "checkpoints" / "ckpt_0000006.pt")))
    rows = [line.split(",") for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[3]) for r in rows] == [("5", "0"), ("10", "3"), ("11", "1")]
    # the cure: continue from it with other train.* options
    monkeypatch.undo()
    out = train(_compose(*over, "train.steps=14", "optimizer.lr=1e-3"), str(tmp_path))
    assert out["step"] == 14 and out["skipped_steps"] == 0


def test_a_real_divergence_through_the_app_is_one_line_with_exit_code_2(tmp_path, capsys, app):
    with pytest.raises(SystemExit) as info:
        app([*FAULT, "train.steps=200", "optimizer.lr=1e6", "train.grad_clip=null", "train.checkpoint_every=100",
                    f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: training diverged" in err[0] and "train.max_bad_steps=20" in err[0], err
    assert _ckpts(tmp_path) == []


def test_save_checkpoint_refuses_nonfinite_weights(tmp_path):
    state = _tiny_state(1)
    state["ema"]["module.w"][0] = float("inf")
    with pytest.raises(ValueError, match="non-finite weights in ema.module.w"):
        save_checkpoint(str(tmp_path / "ckpt_0000001.pt"), state)
    assert os.listdir(tmp_path) == []


def _tiny_state(step, value=1.0):
    w = torch.full((3,), value)
    return {"step": step, "model": {"w": w.clone()}, "ema": {"module.w": w.clone(), "n_averaged": torch.tensor(step)},
            "optimizer": {}, "rng": {"train": torch.zeros(4, dtype=torch.uint8)}, "config": {}, "metrics": {"loss": [], "eval": []},
            "format": ck.FORMAT}


def test_rotation_never_deletes_the_newest_finite_checkpoint(tmp_path):
    # checkpoints with NaN weights, as written before the guard existed, newer than the good one
    for step, value in ((10, 1.0), (20, float("nan")), (30, float("nan"))):
        torch.save(_tiny_state(step, value), str(tmp_path / f"ckpt_{step:07d}.pt"))
    save_checkpoint(str(tmp_path / "ckpt_0000005.pt"), _tiny_state(5), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_0000005.pt", "ckpt_0000010.pt", "ckpt_0000020.pt", "ckpt_0000030.pt"]
    # without NaN files rotation rotates as before
    save_checkpoint(str(tmp_path / "ckpt_0000040.pt"), _tiny_state(40), keep=1)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_0000040.pt"]


def test_resume_from_a_nonfinite_checkpoint_is_refused(tmp_path):
    train(_compose(*FAULT, "train.steps=2"), str(tmp_path))
    path = tmp_path / "checkpoints" / "ckpt_0000002.pt"
    state = load_checkpoint(str(path))
    state["model"]["backbone.inp.weight"][0, 0] = float("nan")
    torch.save(state, str(path))
    with pytest.raises(CheckpointError, match=r"ckpt_0000002\.pt.*non-finite weights \(model\.backbone\.inp\.weight\)"):
        train(_compose(*FAULT), str(tmp_path))


# ---------------------------------------------------------------- start-up
@pytest.mark.parametrize("resume", ["null", "auto"])
def test_a_checkpoints_file_is_an_error_before_the_first_step(tmp_path, resume):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(CheckpointError, match="checkpoints' exists but is not a folder"):
        train(_compose(*FAULT, f"train.resume={resume}"), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # no config, no log: nothing ran


def test_an_unwritable_checkpoint_folder_is_an_error_before_the_first_step(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: refuse the probe instead
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(ck.tempfile, "mkstemp", refuse)
    else:
        (tmp_path / "checkpoints").chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="checkpoints' is not writable .Permission denied"):
            train(_compose(*FAULT), str(tmp_path))
    finally:
        (tmp_path / "checkpoints").chmod(0o700)
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]


def test_stale_temporary_files_of_a_killed_save_are_removed_at_start_up(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [".ckpt_0000007.pt.k2j4_x9.tmp", ".ckpt_0000014.pt.a1.tmp"]
    kept = ["notes.txt", ".other.tmp", "ckpt_0000003.pt.bak"]
    for name in stale + kept:
        (folder / name).write_bytes(b"PK\x03\x04 partial")
    train(_compose(*FAULT, "train.steps=2"), str(tmp_path))
    assert sorted(os.listdir(folder)) == sorted(kept + ["ckpt_0000002.pt"])


def test_resume_with_another_sde_data_model_or_seed_is_refused_naming_the_keys(tmp_path):
    train(_compose(*FAULT, "train.steps=2"), str(tmp_path))
    config = (tmp_path / "config_resolved.yaml").read_text()
    with pytest.raises(ConfigError) as info:
        train(_compose(*FAULT, "sde=ve", "data=moons"), str(tmp_path))
    msg = str(info.value)
    assert "sde._target_: sde_gen.sdes.VPSDE (checkpoint) != sde_gen.sdes.VESDE (now)" in msg
    assert "data._target_: sde_gen.data.oracle.Ring2D (checkpoint) != sde_gen.data.toys.TwoMoons (now)" in msg
    assert "data.noise: (absent) (checkpoint) != 0.05 (now)" in msg
    assert "\n" not in msg and "only train.*, loss, optimizer, lr_scheduler, logger, sampler.* and device may differ" in msg
    for over, expected in (("seed=1", "seed: 0 (checkpoint) != 1 (now)"), ("model.hidden=32", "model.hidden: 16 (checkpoint) != 32 (now)")):
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            train(_compose(*FAULT, over), str(tmp_path))
    assert (tmp_path / "config_resolved.yaml").read_text() == config and _ckpts(tmp_path) == ["ckpt_0000002.pt"]
    # train.* and the evaluation sampler may change: that is how a run is extended
    out = train(_compose(*FAULT, "train.steps=4", "train.batch_size=16", "sampler.nfe=3"), str(tmp_path))
    assert out["step"] == 4


# ---------------------------------------------------------------- a full disk
def _real_enospc_save(real):
    """torch.save whose bytes go to /dev/full: the OS answers every write with ENOSPC."""
    def save(obj, f, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            real(obj, full, *args, **kwargs)
    return save


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@needs_dev_full
def test_a_full_disk_is_an_enospc_oserror_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt_0000001.pt")
    save_checkpoint(path, _tiny_state(1))
    good = open(path, "rb").read()
    real = torch.save
    monkeypatch.setattr(ck.torch, "save", _real_enospc_save(real))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _tiny_state(1, 2.0))
    assert info.value.errno == errno.ENOSPC and info.value.filename == path
    # torch's zip writer given a path reports the same failure as a RuntimeError without errno:
    # taken for a full disk only when the disk is (nearly) full
    monkeypatch.setattr(ck.torch, "save", lambda obj, f: real(obj, "/dev/full"))
    with pytest.raises(RuntimeError, match="unexpected pos|file write failed|iostream error"):
        save_checkpoint(path, _tiny_state(1, 2.0))
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda d: type("usage", (), {"free": 4096})())
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _tiny_state(1, 2.0))
    assert info.value.errno == errno.ENOSPC and info.value.filename == path
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["ckpt_0000001.pt"]


@needs_dev_full
def test_a_full_disk_through_the_app_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, app):
    real, calls = torch.save, [0]

    def first_fits(obj, f, *args, **kwargs):
        calls[0] += 1
        return (real if calls[0] == 1 else _real_enospc_save(real))(obj, f, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", first_fits)
    with pytest.raises(SystemExit) as info:
        app([*FAULT, "train.steps=4", "train.checkpoint_every=2", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: no space left on device" in err[0] and "ckpt_0000004.pt" in err[0], err
    monkeypatch.undo()
    assert _ckpts(tmp_path) == ["ckpt_0000002.pt"]
    assert load_trained(str(tmp_path)).step == 2
