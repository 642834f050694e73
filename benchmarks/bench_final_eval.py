"""How much of a short training run goes to evaluating it (issue 14, item 3): a default run
(ring2d, VP, MLP, batch 512) of `--steps` steps with `train.eval_budget=null` (every evaluation draws
`train.eval_samples` = 10000 samples, the behaviour before the budget) and with the default budget
(0.25), in one process. Reported: CPU seconds of the whole `train` call, of the evaluations
(`training.evaluate`) and of the noise floors (`training._noise_floors`), and the evaluation share.
CPU time (`time.process_time`, OMP_NUM_THREADS=1) rather than wall time: the shared machine's load
does not enter.

    OMP_NUM_THREADS=1 python benchmarks/bench_final_eval.py --steps 200
"""
from __future__ import annotations

import argparse
import tempfile
import time

from hydra import compose, initialize_config_dir

from sde_gen import training
from sde_gen.config import CONF_DIR, register_configs


def _timed(fn, bucket, key):
    def wrapper(*args, **kwargs):
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] += time.process_time() - t0
    return wrapper


def run(steps: int, budget: str) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("config", overrides=[f"train.steps={steps}", "device=cpu", "train.progress=false",
                                           f"train.eval_budget={budget}"])
    bucket = {"evaluate": 0.0, "floors": 0.0}
    saved = training.evaluate, training._noise_floors
    training.evaluate = _timed(saved[0], bucket, "evaluate")
    training._noise_floors = _timed(saved[1], bucket, "floors")
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            t0, w0 = time.process_time(), time.perf_counter()
            out = training.train(cfg, run_dir)
            total, wall = time.process_time() - t0, time.perf_counter() - w0
    finally:
        training.evaluate, training._noise_floors = saved
    final = out["final"]
    return {"budget": budget, "total_cpu_s": total, "wall_s": wall, "eval_cpu_s": bucket["evaluate"],
            "floors_cpu_s": bucket["floors"], "eval_share": (bucket["evaluate"] + bucket["floors"]) / total,
            "eval_samples": final.get("eval_samples"), "sw2": final.get("sw2"), "sw2_floor": final.get("sw2_floor_mean")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    rows = [run(args.steps, "null"), run(args.steps, "0.25")]
    print(f"| train.eval_budget | eval samples | run CPU s | evaluation CPU s | noise floors CPU s | evaluation share | "
          f"final sw2 / floor |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['eval_samples']} | {r['total_cpu_s']:.1f} | {r['eval_cpu_s']:.1f} | "
              f"{r['floors_cpu_s']:.1f} | {100 * r['eval_share']:.0f} % | {r['sw2']:.3g} / {r['sw2_floor']:.3g} |")
    print(f"run CPU time ratio (budget 0.25 / null): {rows[1]['total_cpu_s'] / rows[0]['total_cpu_s']:.2f}")


if __name__ == "__main__":
    main()
