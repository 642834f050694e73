"""benchmarks/bench_gpu.py runs end to end on the CPU at its `--smoke` sizes and writes every row
(the figures of the issue need a GPU; here only that every code path of the script works, and that
a CPU run is labelled as not being GPU figures)."""
import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 10 s of CPU, most of it dynamo tracing the compiled training step
def test_smoke_run_writes_every_row_and_says_it_is_no_gpu_figure(tmp_path):
    out = tmp_path / "gpu.md"
    res = _bench().main(["--smoke", "--out", str(out), "--nfes", "3,5"])
    text = out.read_text()
    assert "**Not GPU figures.**" in text and "Command: `python benchmarks/bench_gpu.py --smoke" in text
    modes = [r["mode"] for r in res["training"]]
    assert modes == ["fp32 eager", "bf16 autocast", "bf16 + channels-last", "bf16 + compile"]
    assert all(r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]) for r in res["training"])
    assert res["training"][0]["speedup"] == 1.0
    rows = {(r["sampler"], r["nfe"]) for r in res["sampling"]}
    assert len(rows) == 6 and all(nfe <= 5 for _, nfe in rows)
    assert all(0 < r["overhead_pct"] and math.isfinite(r["overhead_pct"]) for r in res["sampling"])
    ours, scipy_rt = res["likelihood"]
    # the same probe and tolerances: both land on the closed-form log-density to the same accuracy
    assert ours["mean_err"] < 0.05 and scipy_rt["mean_err"] < 0.05
    assert abs(ours["mean_err"] - scipy_rt["mean_err"]) < 0.01
    for section in ("## Training throughput", "## Sampling", "## Likelihood", "Target bf16 + compile >= 1.8x"):
        assert section in text
