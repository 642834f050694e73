"""Recompute the package table of optimised grids (sde_gen/samplers/optimized_grids.json).

    python benchmarks/make_optimized_grids.py

Each entry is `sde_gen.samplers.grids.optimize_grid` with the inputs stored in it: the exact oracle
score of the named preset, x_T = sde.prior_sample((batch, dim), Generator().manual_seed(0), float64).
Shipped: unipc and dpm_solver_3m (default options) on VP and VE at NFE 4, 5, 6, 8, 10 with the final
denoising step (num_steps = NFE - 1), tuned on mixture64d only; plus one cheap entry (deis on VP,
3 steps, tuned on gaussian16d) that tests/test_samplers_fewsteps.py recomputes.
"""
import os
import sys
import time

import torch

from sde_gen import SDES, make_preset
from sde_gen.samplers import build_sampler
from sde_gen.samplers.grids import optimize_grid, save_grid_table

#: (sampler, SDE, NFE, preset, batch, max_evals)
CHEAP = ("deis", "vp", 4, "gaussian16d", 64, 60)
JOBS = [CHEAP] + [(name, sde, nfe, "mixture64d", 128, 200)
                  for name in ("unipc", "dpm_solver_3m") for sde in ("vp", "ve") for nfe in (4, 5, 6, 8, 10)]


def entry(name, sde_name, nfe, preset, batch, max_evals):
    sde, oracle = SDES[sde_name](), make_preset(preset)
    x_T = sde.prior_sample((batch, oracle.dim), torch.Generator().manual_seed(0), dtype=torch.float64)
    return optimize_grid(sde, build_sampler(name, nfe=nfe), oracle.score_fn(sde), x_T, max_evals=max_evals,
                         tuned_on=f"{preset} (exact oracle score), x_T seed 0")


def main():
    torch.set_num_threads(1)
    out = []
    for job in JOBS:
        t0 = time.time()
        out.append(entry(*job))
        print(job, f"{time.time() - t0:.1f}s", out[-1]["mse_log_snr_grid"], "->", out[-1]["mse_optimized"], file=sys.stderr, flush=True)
    save_grid_table(out, sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    main()
