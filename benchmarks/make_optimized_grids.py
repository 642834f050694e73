"""Recompute the package table of optimised grids (sde_gen/samplers/optimized_grids.json).

    python benchmarks/make_optimized_grids.py

Each entry is `sde_gen.samplers.grids.optimize_grid` with the inputs stored in it: the exact oracle
score of each named preset, x_T = sde.prior_sample((batch, dim), Generator().manual_seed(0), float64).
Shipped: unipc (default options: UniP-2 + UniC, no final denoising, so num_steps = NFE) on VP and
VE at NFE 4, 5, 6, 8, 10, tuned jointly on gaussian16d and mixture64d (mean log relative MSE); plus
one cheap entry (deis on VP, 3 steps, tuned on gaussian16d) that tests/test_samplers_fewsteps.py
recomputes.
"""
import sys
import time

import torch

from sde_gen import SDES, make_preset
from sde_gen.samplers import build_sampler
from sde_gen.samplers.grids import optimize_grid, save_grid_table

#: (sampler, SDE, NFE, presets, batches, max_evals); the samplers' default options (denoise=False)
CHEAP = ("deis", "vp", 3, ("gaussian16d",), (64,), 60)
JOBS = [CHEAP] + [("unipc", sde, nfe, ("gaussian16d", "mixture64d"), (256, 128), 400)
                  for sde in ("vp", "ve") for nfe in (4, 5, 6, 8, 10)]


def entry(name, sde_name, nfe, presets, batches, max_evals):
    sde = SDES[sde_name]()
    fns, xs = [], []
    for preset, batch in zip(presets, batches):
        oracle = make_preset(preset)
        fns.append(oracle.score_fn(sde))
        xs.append(sde.prior_sample((batch, oracle.dim), torch.Generator().manual_seed(0), dtype=torch.float64))
    if len(presets) == 1:
        fns, xs = fns[0], xs[0]
    return optimize_grid(sde, build_sampler(name, nfe=nfe), fns, xs, max_evals=max_evals,
                         tuned_on=" + ".join(presets) + " (exact oracle scores), x_T = sde.prior_sample((batch, dim), "
                         "Generator().manual_seed(0), float64) per preset")


def main():
    torch.set_num_threads(1)
    out = []
    for job in JOBS:
        t0 = time.time()
        out.append(entry(*job))
        print(job[:3], f"{time.time() - t0:.1f}s", out[-1]["mse_log_snr_grid"], "->", out[-1]["mse_optimized"], file=sys.stderr, flush=True)
    save_grid_table(out, sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    main()
