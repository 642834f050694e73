"""Progress and the cost of evaluation (issue 14, item 3): bars for the in-training evaluation and the
likelihood over a data set, shown only on a terminal and when asked, driven by the sampler's
callback (never drawn inside a library sampler loop); the evaluation sample count that keeps a
short run's evaluations a fixed share of its training work."""
import io
import sys

import pytest
import torch

from sde_gen import build_dataset
from sde_gen.apps.evaluate import main as eval_main
from sde_gen.config import TrainConf
from sde_gen.progress import StepProgress, progress_enabled
from sde_gen.samplers import EulerMaruyama
from sde_gen.sdes import VPSDE
from sde_gen.training import MIN_EVAL_SAMPLES, eval_sample_count, evaluate


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_needs_a_terminal_and_the_flag():
    assert progress_enabled(True, _Terminal())
    assert not progress_enabled(True, io.StringIO())
    assert not progress_enabled(False, _Terminal())
    assert not progress_enabled(True, object())  # a stream without isatty


def test_step_bar_counts_the_sampler_steps(monkeypatch):
    data = build_dataset("ring2d")
    sde = VPSDE()
    sampler = EulerMaruyama(nfe=6)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with StepProgress(True, sampler.num_steps, "probe") as bar:
        sampler(sde, data.oracle.score_fn(sde), shape=(4, 2), generator=torch.Generator().manual_seed(0),
                callback=bar.callback)
    n = sampler.num_steps
    assert bar.steps == n >= 5
    assert "probe" in term.getvalue() and f"0/{n}" in term.getvalue()  # tqdm redraws at most every 0.1 s


@pytest.mark.parametrize("terminal,flag", [(True, True), (False, True), (True, False)])
def test_in_training_evaluation_bar_only_on_a_terminal(terminal, flag, monkeypatch):
    data = build_dataset("ring2d")
    sde = VPSDE()
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    tc = TrainConf(eval_samples=32, eval_projections=8, score_error_samples=8, plots=False, progress=flag)
    sampler = EulerMaruyama(nfe=5)
    row = evaluate(data.oracle.score_fn(sde), sde, data, sampler, tc, step=7, seed=0, floors={},
                   run_dir=None, device=torch.device("cpu"))
    assert row["eval_samples"] == 32 and row["nfe"] == 5
    shown = stream.getvalue()
    if terminal and flag:
        n = sampler.num_steps
        assert "evaluate step 7" in shown and f"0/{n}" in shown
    else:
        assert shown == ""


def test_likelihood_bar_is_off_when_stderr_is_not_a_terminal(tmp_path, capsys):
    eval_main(["source=oracle", "problem=ring2d", "num_test=8", "likelihood.method=rk4", "likelihood.fixed_steps=2",
               "progress=true", "device=cpu", f"hydra.run.dir={tmp_path}"])
    assert "likelihood" not in capsys.readouterr().err
    assert (tmp_path / "likelihood.json").is_file()


def test_evaluation_samples_follow_the_run_length():
    # the default run: 6000 steps x 512, two evaluations of NFE 100: 0.25 x 3 x 6000 x 512 / 200 > 10000
    assert eval_sample_count(TrainConf(), 100) == 10000
    # a 200-step run: 0.25 x 3 x 200 x 512 / 100 = 768, raised to the minimum
    assert eval_sample_count(TrainConf(steps=200), 100) == MIN_EVAL_SAMPLES == 1000
    # in between: proportional to steps x batch / (evaluations x nfe)
    assert eval_sample_count(TrainConf(steps=1000, eval_every=500), 20) == int(0.25 * 3 * 1000 * 512 / (2 * 20))
    assert eval_sample_count(TrainConf(steps=1001, eval_every=500), 20) == int(0.25 * 3 * 1001 * 512 / (3 * 20))
    # never above train.eval_samples, and null turns the budget off
    assert eval_sample_count(TrainConf(steps=200, eval_samples=300), 100) == 300
    assert eval_sample_count(TrainConf(steps=200, eval_budget=None), 100) == 10000
    with pytest.raises(ValueError, match="eval_budget"):
        TrainConf(eval_budget=0)


@pytest.mark.slow
def test_a_short_run_evaluates_the_budgeted_sample_count(tmp_path):
    from hydra import compose, initialize_config_dir

    from sde_gen.config import CONF_DIR, register_configs
    from sde_gen.training import train

    tiny = ["train.steps=2", "train.batch_size=16", "train.eval_samples=1500", "train.eval_projections=8",
            "train.noise_floor_replicates=2", "train.score_error_samples=16", "train.progress=false",
            "train.plots=false", "sampler.nfe=2", "lr_scheduler.warmup=1", "device=cpu"]
    register_configs()
    rows = {}
    for budget in ("0.25", "null"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose("config", overrides=[*tiny, f"train.eval_budget={budget}"])
        rows[budget] = train(cfg, str(tmp_path / budget))["final"]
    # 0.25 x 3 x 2 x 16 / (1 x 2) = 12 samples affordable: raised to the minimum, below eval_samples
    assert rows["0.25"]["eval_samples"] == MIN_EVAL_SAMPLES and rows["null"]["eval_samples"] == 1500
