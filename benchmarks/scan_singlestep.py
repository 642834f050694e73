"""Scan of the singlestep DPM-Solver's choices (issue 17): the split of the budget into step orders
and the grid, against the other multistep solvers, by the PATH error: the RMS distance per sample
to a converged solve (DPM-Solver++(3M), 400 log-SNR steps) from the same x_T (n = 400, seed 11,
float64, exact oracle score), on the tuning problems only (gaussian16d, mixture64d; VP and VE).
The path error is free of the sampling noise of the distribution metrics.

    OMP_NUM_THREADS=1 python benchmarks/scan_singlestep.py   (prints the lists of benchmarks/results/fewsteps_singlestep_scan.md)

Splits: "fast(3..3,1)" = DPM-Solver-fast's (the default: `exponential.singlestep_orders`),
"first-low(1,3..3)" = the same orders reversed (the low-order step at high noise), "2s" = order 2,
"2s-first-low" = order 2 reversed.
"""
import torch, itertools
import sde_gen.samplers.exponential as ex
from sde_gen import SDES, make_preset
from sde_gen.samplers import build_sampler, time_grid
from sde_gen.samplers.grids import run_on_grid
torch.set_num_threads(1)
orig = ex.singlestep_orders
SPLITS = {
    "fast(3..3,1)": lambda p, E, l: orig(p, E, l),
    "first-low(1,3..3)": lambda p, E, l: orig(p, E, l)[::-1],
    "2s": lambda p, E, l: orig(2, E, l),
    "2s-first-low": lambda p, E, l: orig(2, E, l)[::-1],
}
n = 400
for sde_name, prob in itertools.product(("vp", "ve"), ("gaussian16d", "mixture64d")):
    sde, o = SDES[sde_name](), make_preset(prob)
    sf = o.score_fn(sde)
    x_T = sde.prior_sample((n, o.dim), torch.Generator().manual_seed(11), dtype=torch.float64)
    ref = run_on_grid(build_sampler("dpm_solver_3m", nfe=400), sde, sf, x_T, time_grid(sde, 400, "log_snr"))
    res = {}
    for nfe in (5, 10):
        for name, f in SPLITS.items():
            ex.singlestep_orders = f
            for grid in ("log_snr", "karras"):
                out = build_sampler("dpm_solver_singlestep", nfe=nfe, grid=grid)(sde, sf, x_T=x_T).samples
                res[(nfe, name, grid)] = float((out - ref).pow(2).sum(1).mean().sqrt())
        ex.singlestep_orders = orig
        for name, opts in (("unipc", {}), ("ipndm", {}), ("dpm_solver_3m", {}), ("unipc", dict(grid="optimized"))):
            try:
                out = build_sampler(name, nfe=nfe, **opts)(sde, sf, x_T=x_T).samples
            except ValueError:
                continue
            res[(nfe, name, opts.get("grid", "log_snr"))] = float((out - ref).pow(2).sum(1).mean().sqrt())
    print(sde_name, prob, flush=True)
    for k, v in sorted(res.items(), key=lambda kv: (kv[0][0], kv[1])):
        print("  ", k, f"{v:.4f}", flush=True)
