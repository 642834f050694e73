"""benchmarks/bench_guidance.py runs end to end at toy sizes, with a trained conditional run and a
trained classifier run, and writes one row per method, sampler, NFE and scale (its figures are
measured in the full run; here only that every code path of the script works)."""
import importlib.util
import pathlib

import pytest
from hydra import compose, initialize_config_dir

from sde_gen.config import CONF_DIR, register_configs
from sde_gen.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["model.hidden=16", "model.depth=1", "model.time_embed_dim=8", "train.batch_size=32", "train.steps=4",
        "lr_scheduler.warmup=1", "train.eval_every=4", "train.eval_samples=32", "train.progress=false",
        "train.plots=false", "device=cpu"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_guidance", ROOT / "benchmarks" / "bench_guidance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    register_configs()
    out = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for name in ("conditional_ring2d", "classifier_ring2d"):
            run_dir = tmp_path_factory.mktemp(name)
            train(compose(config_name="config", overrides=[f"experiment={name}", *TINY]), str(run_dir))
            out[name] = str(run_dir)
    return out


def test_the_benchmark_writes_every_row_with_trained_runs(runs, tmp_path):
    out = tmp_path / "guidance.md"
    _bench().main(["--quick", "--n", "8", "--nfe", "4", "--scales", "0,2", "--samplers", "euler_maruyama",
                   "--replicates", "2", "--projections", "10", "--batch", "16", "--repeats", "1",
                   "--cfg-run", runs["conditional_ring2d"], "--classifier-run", runs["classifier_ring2d"],
                   "--out", str(out)])
    text = out.read_text()
    methods = ["CFG, exact model", "classifier, exact", "CFG, trained (4 steps)",
               "classifier, trained (4 steps) + exact score", "classifier, trained (4 steps) + trained no-label score"]
    for method in methods:
        rows = [line for line in text.splitlines() if line.startswith(f"| {method} | euler_maruyama | 4 |")]
        assert len(rows) == 2, (method, text)  # scales 0 and 2
    # the batch-equivalent cost: CFG at s = 2 is one forward of 2B per call, classifier guidance one of B
    cfg_s2 = next(line for line in text.splitlines() if line.startswith("| CFG, trained (4 steps) | euler_maruyama | 4 | 2 |"))
    spent, batch_eq = (int(v) for v in cfg_s2.split("|")[5:7])
    assert batch_eq == 2 * spent
    assert "## Cost of one guided evaluation" in text


def test_a_run_of_another_problem_adds_no_rows(runs, tmp_path):
    out = tmp_path / "g.md"
    _bench().main(["--problems", "mixture64d", "--n", "4", "--nfe", "4", "--scales", "1", "--samplers", "euler_maruyama",
                   "--replicates", "2", "--projections", "10", "--batch", "16", "--repeats", "1",
                   "--cfg-run", runs["conditional_ring2d"], "--classifier-run", runs["classifier_ring2d"],
                   "--out", str(out)])
    assert "trained" not in out.read_text()
