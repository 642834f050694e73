"""Training benchmark: the default run (wall time and sample quality vs the noise floor),
training throughput of the MLP and the U-Net, and the trained score error vs t.

Run: python benchmarks/bench_train.py [--quick] [--replicates R]
Writes benchmarks/results/train.md (atomically) and prints the same markdown.

* Default run: `python -m sde_gen.train` with no overrides (ring2d, VP, MLP, Euler-Maruyama
  evaluation with 10,000 EMA samples), repeated with R seeds; reported: wall time of the whole app
  (start-up included) and the final sliced W2 / mode-weight error next to the noise floor
  (mean +/- std over independent sets of exact samples). Target: metric <= floor mean + 2 std.
* Throughput: optimiser steps per second for the default MLP on ring2d and the default U-Net on
  8x8 digits (batch 128), measured in this process one after the other (their ratio is the
  machine-independent number).
* Score error vs t of the first default run (from its metrics.csv).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sde_gen.io import atomic_write_text  # noqa: E402


def default_runs(replicates: int, quick: bool):
    rows = []
    for seed in range(replicates):
        with tempfile.TemporaryDirectory() as tmp:
            over = [f"seed={seed}", f"hydra.run.dir={tmp}/run", "train.progress=false"]
            if quick:
                over += ["train.steps=300", "train.eval_samples=2000", "train.eval_every=300"]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "sde_gen.train", *over], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            with open(os.path.join(tmp, "run", "metrics.csv")) as fh:
                last = list(csv.DictReader(fh))[-1]
            rows.append((seed, wall, {k: float(v) for k, v in last.items()}))
    return rows


def throughput(quick: bool):
    from hydra import compose, initialize_config_dir

    from sde_gen.config import instantiate, register_configs
    from sde_gen.losses import DenoisingScoreMatching
    from sde_gen.config import CONF_DIR
    from sde_gen.nets import build_score_model

    register_configs()
    out = []
    steps = 20 if quick else 200
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        for label, over, batch in (("MLP, ring2d", [], 512), ("U-Net, digits 8x8", ["experiment=digits"], 128)):
            cfg = compose("config", overrides=over)
            torch.manual_seed(0)
            sde = instantiate(cfg.sde, "sde")
            data = instantiate(cfg.data, "data")
            model = build_score_model(cfg.model, sde, data.event_shape, data.data_std())
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            loss_fn = DenoisingScoreMatching()
            g = torch.Generator().manual_seed(0)
            n_params = sum(p.numel() for p in model.parameters())
            for i in range(steps + 5):
                if i == 5:  # warm-up excluded
                    t0 = time.perf_counter()
                loss = loss_fn(model, sde, data.sample_batch(batch, g), g)
                opt.zero_grad()
                loss.backward()
                opt.step()
            out.append((label, batch, n_params, steps / (time.perf_counter() - t0)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test of the script)")
    parser.add_argument("--replicates", type=int, default=3, help="seeds of the default run")
    args = parser.parse_args(argv)
    runs = default_runs(args.replicates, args.quick)
    tp = throughput(args.quick)

    def ms(vals):
        t = torch.tensor(vals, dtype=torch.float64)
        return f"{float(t.mean()):.4f} ± {float(t.std()) if len(vals) > 1 else 0.0:.4f}"

    lines = [
        "# Training benchmark",
        "",
        f"Command: `python benchmarks/bench_train.py{' --quick' if args.quick else ''} --replicates {args.replicates}`"
        f"  (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "## Default run (`python -m sde_gen.train`, ring2d, VP, MLP; 10,000 EMA samples)",
        "",
        "| seed | wall time (s) | sliced W2 | SW2 floor mean ± std | within mean+2std | mode-weight err | floor mean ± std | within |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, wall, m in runs:
        ok_sw = m["sw2"] <= m["sw2_floor_mean"] + 2 * m["sw2_floor_std"]
        ok_mw = m["mode_err"] <= m["mode_err_floor_mean"] + 2 * m["mode_err_floor_std"]
        lines.append(
            f"| {seed} | {wall:.1f} | {m['sw2']:.4f} | {m['sw2_floor_mean']:.4f} ± {m['sw2_floor_std']:.4f} | {'yes' if ok_sw else 'no'} "
            f"| {m['mode_err']:.4f} | {m['mode_err_floor_mean']:.4f} ± {m['mode_err_floor_std']:.4f} | {'yes' if ok_mw else 'no'} |"
        )
    lines += [
        "",
        f"Over seeds: wall {ms([r[1] for r in runs])} s, sliced W2 {ms([r[2]['sw2'] for r in runs])}, "
        f"mode-weight error {ms([r[2]['mode_err'] for r in runs])}.",
        "",
        "## Training throughput (this process, one after the other)",
        "",
        "| model | batch | parameters | steps/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {label} | {b} | {n:,} | {r:.1f} |" for label, b, n, r in tp]
    lines += [f"", f"MLP / U-Net step-rate ratio: {tp[0][3] / tp[1][3]:.1f}", "",
              "## Score error vs t (seed 0): E s(t)^2 |s_theta - grad log p_t|^2", "", "| t | error |", "|---|---|"]
    m0 = runs[0][2]
    for k, v in m0.items():
        if k.startswith("score_err@t="):
            lines.append(f"| {k.split('=')[1]} | {v:.4g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(os.path.join(HERE, "results", "train.md"), text)


if __name__ == "__main__":
    main()
