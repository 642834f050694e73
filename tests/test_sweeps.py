"""Every sweep config runs as a two-point Hydra multirun miniature, and `sde-gen-report` turns it
into a table and a plot; the local-parallel launcher config composes and runs."""
import importlib.util
import json

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
    # every row's numbers are its run's metrics.json, and the ratio is recomputed from value and floor
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| problem |"))
    header = [c.strip() for c in lines[top].strip("|").split("|")]
    rows = {}
    for line in lines[top + 2:top + 4]:
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|"))))
        rows[cells["sampler"]] = cells
    assert set(rows) == {"euler_maruyama", "ddim"}
    for path in sweep.rglob("metrics.json"):
        m = json.loads(path.read_text())
        row = rows[m["sampler"]]
        assert row["SW2"] == format(m["sw2"], ".3g") and row["NFE spent"] == format(m["nfe_spent"], "g")
        assert row["mode-weight err"] == format(m["mode_weight_error"], ".3g")
        ratio = m["sw2"] / m["sw2_floor_mean"]
        assert m["sw2_ratio"] == pytest.approx(ratio, rel=1e-9)
        assert row["SW2 / floor"].split(" ")[0] == format(ratio, ".2f")
        assert f"(floor {format(m['sw2_floor_mean'], '.3g')} " in row["SW2 / floor"]


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
