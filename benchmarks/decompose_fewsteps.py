"""Where the error at a small NFE comes from (issue 17): discretisation vs what a converged solve of
the same probability-flow ODE reaches, on the few-step benchmark's problems.

    python benchmarks/decompose_fewsteps.py [--n 2000] [--nfe 10] [--seeds 2024,7,99]
        [--problems gaussian16d,mixture64d,ring2d,mixture24d] [--sdes vp,ve] [--out ...]

For every (problem, SDE, solver setting) and every starting-noise seed:
  q_N / floor    quality at NFE N over the noise floor (bench_fewsteps's metric: Bures-Wasserstein
                 for a single Gaussian, sliced W2 to fresh exact data for mixtures);
  q_ref / floor  the same for a converged solve (DPM-Solver++(3M), 400 log-SNR steps, to the same
                 t_min with the same final step) from the SAME x_T: what the setting could reach
                 with no discretisation error (its floor plus what t_min / the final step cost);
  path           RMS distance between the NFE-N samples and the converged solve's, per sample
                 (the discretisation error itself, free of the floor's sampling noise);
  BW / BW floor  the Bures-Wasserstein distance of the samples' mean and covariance to the exact
                 law's (closed form, also for mixtures) over the mean of exact draws of size n:
                 judged against the exact law, not a fixed sample set (`bw_ratio_fn`).
Cells are means over the seeds (x_T = prior_sample(seed)); the exact score of the oracle.
`--settings x,...`: the row "x" is an exact sampler of the same size (oracle.sample with each seed), the
spread of the ratio itself. `mixture24d` is a problem no setting was tuned on: a random 24-D mixture of 6 Gaussians
(`untuned_mixture` below).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_samplers import quality  # noqa: E402

from sde_gen import SDES, GaussianMixture, make_preset  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.metrics import gaussian_w2_to_target  # noqa: E402
from sde_gen.samplers import build_sampler, time_grid  # noqa: E402
from sde_gen.samplers.grids import run_on_grid  # noqa: E402

SETTINGS = [
    ("unipc", {}), ("unipc", dict(solver_order=3)), ("ipndm", {}), ("dpm_solver_3m", {}),
    ("dpm_solver_singlestep", {}), ("dpm_solver_singlestep", dict(denoise=True)), ("unipc", dict(grid="karras")),
    ("unipc", dict(grid="optimized")),
]


def untuned_mixture() -> GaussianMixture:
    """A random 24-D mixture of 6 diagonal Gaussians (seed 24): never used for tuning."""
    g = torch.Generator().manual_seed(24)
    K, D = 6, 24
    means = 1.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_var = math.log(0.005) + (math.log(0.3) - math.log(0.005)) * torch.rand(K, D, generator=g, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(w / w.sum(), means, torch.exp(log_var))


def problem(name):
    return untuned_mixture() if name == "mixture24d" else make_preset(name)


def bw_ratio_fn(oracle, n, replicates):
    """Bures-Wasserstein distance of the samples' mean and covariance to the exact law's (closed form
    for a mixture too), over its floor: the mean over `replicates` exact draws of size n (seed 4242).
    Judged against the exact moments, not a fixed sample set, so exact samples score 1 on average."""
    g = torch.Generator().manual_seed(4242)
    floor = sum(float(gaussian_w2_to_target(oracle.sample(n, g, dtype=torch.float64), oracle)) for _ in range(replicates)) / replicates
    return lambda x: float(gaussian_w2_to_target(x, oracle)) / floor


def label(name, opts):
    return name + ("" if not opts else " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--seeds", default="2024,7,99")
    p.add_argument("--problems", default="gaussian16d,mixture64d,ring2d,mixture24d")
    p.add_argument("--sdes", default="vp,ve")
    p.add_argument("--settings", default="", help="indices into SETTINGS (default: all)")
    p.add_argument("--replicates", type=int, default=6)
    p.add_argument("--projections", type=int, default=200)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fewsteps_decompose.md"))
    args = p.parse_args(argv)
    args.floor_cache = {}
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    settings = SETTINGS if not args.settings else [("exact", {}) if i == "x" else SETTINGS[int(i)] for i in args.settings.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cmd = "python benchmarks/decompose_fewsteps.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Few-step error decomposition (issue 17)", "", f"Command: `{cmd.strip()}`", "",
             f"torch {torch.__version__}, 1 thread, float32 samples, n = {args.n}, NFE {args.nfe}, seeds {seeds} "
             "(cells: mean over seeds; in brackets min-max), floors over "
             f"{args.replicates} replicates. q_N = quality at NFE {args.nfe} / floor; q_ref = a converged solve "
             "(3M, 400 log-SNR steps, same t_min and final step, same x_T) / floor; path = RMS distance of the "
             "NFE samples to the converged solve's.", ""]
    for sde_name in args.sdes.split(","):
        sde = SDES[sde_name]()
        for prob in args.problems.split(","):
            oracle = problem(prob)
            score = oracle.score_fn(sde)
            rows = []
            qname = ""
            refs = {}  # (seed, t_min, denoise) -> (converged samples, their quality / floor, their BW / floor)
            bw = bw_ratio_fn(oracle, args.n, args.replicates)
            for name, opts in settings:
                qs, qr, ps, bs, br = [], [], [], [], []
                f = lambda v: f"{sum(v) / len(v):.3f} [{min(v):.2f}-{max(v):.2f}]"  # noqa: E731
                if name == "exact":  # an exact sampler of the same size: the spread of the ratio itself
                    for seed in seeds:
                        x = oracle.sample(args.n, torch.Generator().manual_seed(seed), dtype=torch.float32)
                        _, q, fm, _, qname = quality(x, oracle, sde, args)
                        qs.append(q / fm)
                        bs.append(bw(x))
                    rows.append(f"| exact draws (oracle.sample(n, seed)) | {f(qs)} | - | {f(bs)} | - | - |")
                    print(f"[{time.strftime('%H:%M:%S')}] {sde_name} {prob} {rows[-1]}", file=sys.stderr, flush=True)
                    continue
                try:
                    smp = build_sampler(name, nfe=args.nfe, **opts)
                except ValueError as err:
                    print("skip", name, opts, err, file=sys.stderr)
                    continue
                for seed in seeds:
                    x_T = sde.prior_sample((args.n, oracle.dim), torch.Generator().manual_seed(seed), dtype=torch.float32)
                    try:
                        with torch.no_grad():
                            out = smp(sde, score, x_T=x_T.clone()).samples
                    except ValueError:  # no stored optimised grid here
                        break
                    key = (seed, smp.t_min, smp.denoise)
                    if key not in refs:
                        ref_solver = build_sampler("dpm_solver_3m", nfe=400 + smp.denoise, denoise=smp.denoise, t_min=smp.t_min)
                        ref = run_on_grid(ref_solver, sde, score, x_T.double(), time_grid(sde, 400, "log_snr", t_min=smp.t_min))
                        _, q2, fm2, _, _ = quality(ref.float(), oracle, sde, args)
                        refs[key] = (ref, q2 / fm2, bw(ref))
                    ref = refs[key][0]
                    _, q, fm, _, qname = quality(out, oracle, sde, args)
                    qs.append(q / fm)
                    qr.append(refs[key][1])
                    bs.append(bw(out))
                    br.append(refs[key][2])
                    ps.append(float((out.double() - ref).pow(2).sum(1).mean().sqrt()))
                if not qs:
                    continue
                rows.append(f"| {label(name, opts)} | {f(qs)} | {f(qr)} | {f(bs)} | {f(br)} | {sum(ps) / len(ps):.4f} |")
                print(f"[{time.strftime('%H:%M:%S')}] {sde_name} {prob} {rows[-1]}", file=sys.stderr, flush=True)
            lines += [f"## {prob} | {sde_name} ({qname})", "",
                      f"| setting | q_{args.nfe} / floor | q_ref / floor | BW_{args.nfe} / BW floor | BW_ref / BW floor | path RMS |",
                      "|---|---|---|---|---|---|"] + rows + [""]
            atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
