"""Scan of the few-step knobs (grid x t_min x denoise) for the multistep solvers, on the tuning
problems only (gaussian16d, mixture64d), to choose defaults from measurements.

    python benchmarks/scan_fewsteps.py [--n 2000] [--nfe 5,10] [--sdes vp,ve] [--out benchmarks/results/fewsteps_scan.md]

Cells: quality / noise floor (Bures-Wasserstein for gaussian16d, sliced W2 for mixture64d), same
x_T for every row, exact oracle score, float32 samples.
"""
import argparse
import itertools
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_samplers import quality  # noqa: E402

from sde_gen import SDES, make_preset  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.samplers import build_sampler  # noqa: E402

SOLVERS = [("dpm_solver", {}), ("dpm_solver_3m", {}), ("unipc", {}), ("unipc", dict(solver_order=3))]
GRIDS = ("log_snr", "karras")
T_MINS = (None, 0.01, 0.03)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--nfe", default="5,10")
    p.add_argument("--sdes", default="vp,ve")
    p.add_argument("--problems", default="gaussian16d,mixture64d")
    p.add_argument("--replicates", type=int, default=6)
    p.add_argument("--projections", type=int, default=200)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fewsteps_scan.md"))
    args = p.parse_args(argv)
    args.floor_cache = {}
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    nfes = [int(v) for v in args.nfe.split(",")]
    cols = [(s, pr, v) for s in args.sdes.split(",") for pr in args.problems.split(",") for v in nfes]
    rows = {}
    for sde_name, problem in itertools.product(args.sdes.split(","), args.problems.split(",")):
        sde, oracle = SDES[sde_name](), make_preset(problem)
        x_T = sde.prior_sample((args.n, oracle.dim), torch.Generator().manual_seed(2024), dtype=torch.float32)
        for (name, opts), grid, t_min, dn, nfe in itertools.product(SOLVERS, GRIDS + ("optimized",), T_MINS, (True, False), nfes):
            if grid == "optimized" and (t_min is not None or dn):  # the stored grids: t_min = eps, no denoising
                continue
            try:
                s = build_sampler(name, nfe=nfe, grid=grid, t_min=t_min, denoise=dn, **opts)
                r = s(sde, oracle.score_fn(sde), x_T=x_T.clone())
            except ValueError:
                continue
            _, q, fm, _, _ = quality(r.samples, oracle, sde, args)
            key = f"{name} {opts or ''} grid={grid} t_min={t_min} denoise={dn}"
            rows.setdefault(key, {})[(sde_name, problem, nfe)] = q / fm
        print(sde_name, problem, "done", file=sys.stderr, flush=True)
    cmd = "python benchmarks/scan_fewsteps.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Few-step knob scan (issue 17; tuning problems only)", "", f"Command: `{cmd.strip()}`", "",
             f"n = {args.n}, floors over {args.replicates} replicates, {args.projections} projections; cells = quality / floor.", "",
             "| setting | " + " | ".join(f"{s} {pr} NFE {v}" for s, pr, v in cols) + " | mean |", "|---|" + "---|" * (len(cols) + 1)]
    def mean(r):
        vals = [r.get(c) for c in cols]
        return sum(vals) / len(vals) if all(v is not None for v in vals) else float("inf")
    for key, r in sorted(rows.items(), key=lambda kv: mean(kv[1])):
        lines.append(f"| {key} | " + " | ".join("-" if r.get(c) is None else f"{r[c]:.2f}" for c in cols) + f" | {mean(r):.2f} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
