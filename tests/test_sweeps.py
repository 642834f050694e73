"""Every sweep config runs as a two-point Hydra multirun miniature, and `sde-gen-report` turns it
into a table and a plot; the local-parallel launcher config composes and runs."""
import importlib.util

import pytest

from sde_gen.apps.report import main as report_main
from sde_gen.apps.sample import main as sample_main

from .test_sample_app import SMALL
from .test_train import _app


def test_sampler_grid_sweep_miniature_and_report(tmp_path):
    sweep = tmp_path / "grid"
    # command-line values override the sweep's own parameter lists: a 2-point grid
    sample_main(["experiment=sampler_grid", "problem=ring2d", "sampler=euler_maruyama,ddim", "sampler.nfe=4",
                 "num_samples=200", f"hydra.sweep.dir={sweep}", *SMALL])
    assert len(list(sweep.rglob("metrics.json"))) == 2
    assert report_main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "| euler_maruyama |" in text and "| ddim |" in text and (sweep / "report.png").stat().st_size > 0


def test_training_sweep_miniature_and_report(tmp_path):
    sweep = tmp_path / "train_sweep"
    proc = _app(tmp_path, "experiment=sweep_sde_weighting", "sde=vp,ve", "loss.weighting=likelihood",
                f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report_main([str(sweep)]) == 0
    rows = [l for l in (sweep / "report.md").read_text().splitlines() if l.startswith("| 0_") or l.startswith("| 1_")]
    assert len(rows) == 2
    assert "VPSDE" in rows[0] and "VESDE" in rows[1] and all("| likelihood |" in r for r in rows)
    assert (sweep / "report_training.png").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                    reason="hydra-joblib-launcher not installed (pip install -e '.[sweep]')")
def test_local_parallel_launcher_runs_a_sweep(tmp_path):
    sweep = tmp_path / "parallel"
    sample_main(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "sampler=euler_maruyama,heun",
                 "sampler.nfe=4", "num_samples=100", f"hydra.sweep.dir={sweep}", *SMALL])
    assert len(list(sweep.rglob("metrics.json"))) == 2
