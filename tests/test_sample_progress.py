"""The sample app's progress bar (issue 14, item 4): one tick per sampler step through the sampler's
callback, over every batch; shown only on a terminal and with progress=true; the library's
samplers and `sample` stay silent (no tqdm inside library functions)."""
import json
import sys

import pytest
import torch

import sde_gen.apps.sample as sample_app
from sde_gen import VPSDE, make_preset, sample
from sde_gen.samplers import SAMPLERS

ARGS = ["problem=ring2d", "sampler=euler_maruyama", "sampler.nfe=7", "num_samples=90", "batch_size=40",
        "noise_floor_replicates=2", "num_projections=8", "plot=false", "device=cpu"]


class _Recorder(sample_app._StepProgress):
    made = []

    def __init__(self, enabled, total, desc):
        super().__init__(enabled, total, desc)
        self.enabled, self.total = enabled, total
        _Recorder.made.append(self)


@pytest.fixture
def recorder(monkeypatch):
    _Recorder.made = []
    monkeypatch.setattr(sample_app, "_StepProgress", _Recorder)
    return _Recorder


@pytest.mark.parametrize("tty, progress, shown", [(True, "true", True), (True, "false", False), (False, "true", False)])
def test_one_tick_per_step_over_all_batches(tmp_path, monkeypatch, recorder, tty, progress, shown):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    sample_app.main([*ARGS, f"progress={progress}", f"hydra.run.dir={tmp_path}"])
    (bar,) = recorder.made
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 90 samples in batches of 40 -> 3 sampler calls; nfe = 7 is 6 Euler-Maruyama steps + the
    # final denoising evaluation (denoise=true), so 3 x 6 ticks
    assert bar.enabled is shown and metrics["num_steps"] == 6
    assert bar.total == bar.steps == 3 * 6


def test_library_sampling_writes_nothing_to_stderr(capfd):
    sde, ring = VPSDE(), make_preset("ring2d")
    for name in ("euler_maruyama", "dpm_solver"):
        sample(sde, ring.score_fn(sde), (16, 2), sampler=name, nfe=6, generator=torch.Generator().manual_seed(0))
    assert capfd.readouterr().err == ""
    assert "euler_maruyama" in SAMPLERS
