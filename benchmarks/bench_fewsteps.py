"""Few-step benchmark (issue 17): quality at NFE 4-20 of the multistep exponential integrators, with
and without the final denoising step and on the stored optimised grids, against the peers.

    python benchmarks/bench_fewsteps.py [--n 1000] [--nfe 4,5,6,8,10,15,20] [--sdes vp,ve]
        [--problems gaussian16d,mixture64d,ring2d] [--out benchmarks/results/fewsteps.md]

(defaults: n = 2000 samples per run, 6 floor replicates, 200 projections)

Every sampler starts from the SAME x_T ~ prior with the exact oracle score (float32 samples);
quality is the Bures-Wasserstein error of the sample moments (gaussian16d) or sliced W2 to fresh
exact data (mixtures), divided by the noise floor of exact samples of the same size (mean over
replicates), as in bench_samplers.py (`oracle_metrics`). NFE counts every score call (peers: the
calls they made). Rows marked `grid=optimized` use the package table (tuned on the data in its
`inputs.tuned_on`; ring2d is never tuned on).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_samplers import RealisticCostScore, quality  # noqa: E402
from peers import FEWSTEP_PEER_NAMES, build_peers  # noqa: E402

from sde_gen import SDES, make_preset  # noqa: E402
from sde_gen.evaluation import TimedScore  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.metrics import gaussian_w2_to_target  # noqa: E402
from sde_gen.samplers import build_sampler  # noqa: E402

NFES = (4, 5, 6, 8, 10, 15, 20)
PROBLEMS = ("gaussian16d", "mixture64d", "ring2d")
#: ours: (name, options); each also runs with denoise=False
OURS = [
    ("dpm_solver", {}), ("dpm_solver_3m", {}), ("unipc", {}), ("unipc", dict(solver_order=3)),
    ("deis", {}), ("ipndm", {}), ("dpm_solver_3m", dict(grid="karras")), ("unipc", dict(grid="karras")),
    ("dpm_solver_singlestep", {}), ("dpm_solver_singlestep", dict(solver_order=2)),
]


def judge(samples, oracle, sde, args):
    """`quality` (bench_samplers), or with --metric bw the Bures-Wasserstein distance of the samples'
    mean and covariance to the exact law's (closed form for a mixture too) and its floor: the mean over
    the replicates of exact draws of the same size (judged against the exact law, as the samples are)."""
    if args.metric == "default" or oracle.num_components == 1:
        return quality(samples, oracle, sde, args)
    cache = args.floor_cache.setdefault(("bw", id(oracle)), {})
    if "floor" not in cache:
        g = torch.Generator().manual_seed(4242)
        cache["floor"] = sum(float(gaussian_w2_to_target(oracle.sample(samples.shape[0], g, dtype=torch.float64), oracle))
                             for _ in range(args.replicates)) / args.replicates
    q = float(gaussian_w2_to_target(samples, oracle)) if torch.isfinite(samples).all() else math.inf
    return None, q, cache["floor"], None, "BW of the moments"


def problem_oracle(name):
    """A preset, or `mixture24d`: the untuned random mixture of decompose_fewsteps.py."""
    if name == "mixture24d":
        from decompose_fewsteps import untuned_mixture

        return untuned_mixture()
    return make_preset(name)


def label(name, opts):
    return name + ("" if not opts else " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--nfe", default=",".join(map(str, NFES)))
    p.add_argument("--sdes", default="vp,ve")
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--seeds", default="2024", help="seeds of the starting noise x_T; cells are means over them")
    p.add_argument("--raw-only", action="store_true", help="our solvers only with denoise=False (their default)")
    p.add_argument("--metric", default="default", choices=("default", "bw"),
                   help="default: Bures-Wasserstein for a single Gaussian, sliced W2 to a fixed exact set for mixtures; "
                        "bw: Bures-Wasserstein of the moments against the exact law for every problem")
    p.add_argument("--replicates", type=int, default=6)
    p.add_argument("--projections", type=int, default=200)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fewsteps.md"))
    p.add_argument("--realistic-only", action="store_true",
                   help="only the sampler-overhead table: the exact score + 0 x an MLP of realistic cost, 1,000 samples")
    args = p.parse_args(argv)
    if args.realistic_only:
        return realistic(args, argv)
    args.floor_cache = {}
    nfes = [int(v) for v in args.nfe.split(",")]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    peers = [pp for pp in build_peers() if pp.name in FEWSTEP_PEER_NAMES]
    cmd = "python benchmarks/bench_fewsteps.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Few-step benchmark (issue 17)", "",
        f"Command: `{cmd.strip()}`", "",
        f"torch {torch.__version__}, 1 thread, CPU, float32 samples, n = {args.n} per run, floors over {args.replicates} "
        f"replicates, {args.projections} projections. Cells: quality / noise floor (lower is better, 1.0 = as good as exact "
        "samples of the same size). `dn` = with the final Tweedie denoising step (the default), `raw` = denoise=False "
        "(the evaluation goes to the grid; the default of the new solvers). Peers are run with their own defaults. "
        "Bold: the best cell of the column.", "",
        f"Starting-noise seeds: {args.seeds} (x_T = prior_sample(Generator().manual_seed(seed))); each cell is the mean "
        "of the ratio over the seeds (peers get the same x_T). `mixture24d` is an untuned random 24-D mixture "
        "(benchmarks/decompose_fewsteps.py `untuned_mixture`).", "",
    ] + ([f"Metric (--metric bw): for every problem the Bures-Wasserstein distance of the samples' mean and covariance to "
          f"the exact law's (closed form for a mixture), over its floor = the mean over {args.replicates} exact draws of the "
          "same size (seed 4242), judged the same way.", ""] if args.metric == "bw" else [])
    for pp in peers:
        if pp.error:
            lines.append(f"- peer {pp.name}: NOT AVAILABLE ({pp.error[:100]})")
    summary = []
    for sde_name in args.sdes.split(","):
        sde = SDES[sde_name]()
        for problem in args.problems.split(","):
            oracle = problem_oracle(problem)
            seeds = [int(v) for v in args.seeds.split(",")]
            table = {}  # label -> {nfe: [ratio per seed]}
            floor = None
            entries = []
            for name, opts in OURS:
                for dn in ((False,) if args.raw_only else (True, False)):
                    entries.append(("ours", label(name, opts) + (" dn" if dn else " raw"), name, dict(opts, denoise=dn)))
            entries.append(("ours", "unipc (grid=optimized) raw", "unipc", dict(grid="optimized", denoise=False)))
            for nfe, seed in itertools.product(nfes, seeds):
                x_T = sde.prior_sample((args.n, oracle.dim), torch.Generator().manual_seed(seed), dtype=torch.float32)
                for who, lab, name, opts in entries:
                    try:
                        s = build_sampler(name, nfe=nfe, **opts)
                        timed = TimedScore(oracle.score_fn(sde), x_T.device)
                        with torch.no_grad():
                            r = s(sde, timed, x_T=x_T.clone())
                        assert timed.calls == nfe, (timed.calls, nfe)
                        _, q, fm, _, qname = judge(r.samples, oracle, sde, args)
                    except ValueError:  # no stored optimised grid for this budget
                        continue
                    floor = fm
                    table.setdefault((who, lab), {}).setdefault(nfe, []).append(q / fm)
                for pp in peers:
                    if pp.error or sde_name not in pp.sdes:
                        continue
                    timed = TimedScore(oracle.score_fn(sde), x_T.device)
                    try:
                        with torch.no_grad():
                            out, _ = pp.run(sde, timed, x_T.clone(), nfe, torch.Generator().manual_seed(1))
                        _, q, fm, _, qname = judge(out, oracle, sde, args)
                    except Exception as err:  # reported, never dropped
                        print(f"peer {pp.name} failed: {err}", file=sys.stderr)
                        continue
                    ratio = q / fm if math.isfinite(q) else math.inf
                    key = ("peer", pp.name + f" [{timed.calls} calls]" if timed.calls != nfe else pp.name)
                    table.setdefault(key, {}).setdefault(nfe, []).append(ratio)
                print(f"[{time.strftime('%H:%M:%S')}] {sde_name} {problem} NFE {nfe} seed {seed} done", file=sys.stderr, flush=True)
            per_seed = table
            table = {k: {v: sum(r) / len(r) for v, r in row.items() if len(r) == len(seeds)} for k, row in per_seed.items()}
            lines += [f"## {problem} | {sde_name} ({qname} floor {floor:.4g})", "",
                      "| who | sampler | " + " | ".join(f"NFE {v}" for v in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)]
            for (who, lab), row in table.items():
                best = {v: min(r.get(v, math.inf) for r in table.values()) for v in nfes}
                cells = []
                for v in nfes:
                    x = row.get(v)
                    cells.append("-" if x is None else (f"**{x:.2f}**" if x == best[v] else f"{x:.2f}"))
                lines.append(f"| {who} | {lab} | " + " | ".join(cells) + " |")
            lines.append("")
            for v in nfes:
                ours = {k[1]: r[v] for k, r in table.items() if k[0] == "ours" and v in r}
                theirs = {k[1]: r[v] for k, r in table.items() if k[0] == "peer" and v in r}
                if not ours:
                    continue
                bo = min(ours, key=ours.get)
                bp = min(theirs, key=theirs.get) if theirs else None
                spread = lambda k: "" if len(seeds) == 1 else " [" + ", ".join(f"{r:.2f}" for r in per_seed[k][v]) + "]"  # noqa: E731
                summary.append(f"- {problem}/{sde_name} NFE {v}: our best {bo} {ours[bo]:.2f}x floor{spread(('ours', bo))}; best peer "
                               + (f"{bp} {theirs[bp]:.2f}x{spread(('peer', bp))}" if bp else "none")
                               + (f"; ours better: {ours[bo] < theirs[bp]}" if bp else ""))
            atomic_write_text(args.out, "\n".join(lines + ["## Summary (this run)", ""] + summary + [""]))
    lines += ["## Summary (this run)", ""] + summary + [""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(summary))
    print(f"wrote {args.out}")


class CpuTimedScore:
    """Wraps `score_fn`, counting calls and summing the CPU time of this thread spent inside it
    (`time.thread_time`): with torch on one thread every operation runs on the calling thread, so
    the figure does not count time the process spent waiting for a core on a loaded machine."""

    def __init__(self, score_fn):
        self.score_fn, self.calls, self.cpu_s = score_fn, 0, 0.0

    def __call__(self, x, t):
        self.calls += 1
        t0 = time.thread_time()
        out = self.score_fn(x, t)
        self.cpu_s += time.thread_time() - t0
        return out


OVERHEAD_SAMPLERS = [("dpm_solver", {}), ("dpm_solver_3m", {}), ("unipc", {}), ("unipc", dict(solver_order=3)),
                     ("deis", {}), ("ipndm", {}), ("dpm_solver_singlestep", {})]


def realistic(args, argv):
    """Sampler overhead (CPU time outside the score function) with a score of realistic cost."""
    torch.set_num_threads(1)
    cmd = "python benchmarks/bench_fewsteps.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Few-step samplers: overhead with a realistic-cost score (issue 17)", "", f"Command: `{cmd.strip()}`", "",
             f"torch {torch.__version__}, 1 thread. gaussian16d, 1,000 samples, float32, score = exact score + 0 x MLP "
             "17-512-512-512-16 (bench_samplers.RealisticCostScore). Measured as CPU time of the one sampling thread "
             "(`time.thread_time`, so time spent waiting for a core on the shared machine is not counted) over 9 runs of "
             "the whole call `sampler(sde, score, x_T=...)` (building the sampler, its coefficient tables, the loop): "
             "score = CPU time inside the score calls, own = total - score. On a loaded machine CPU time still inflates "
             "(shared caches, memory bandwidth), and more for the sampler's memory-bound elementwise steps than for the "
             "compute-bound network, so each part is taken at its minimum over the 9 runs (its least-disturbed cost): "
             "own % = min own / (min own + min score). The median of the per-run ratios is shown too.", "",
             "| SDE | NFE | sampler | score CPU ms (min) | own CPU ms (min) | own % (mins) | own % (median of runs) |",
             "|---|---|---|---|---|---|---|"]
    oracle = make_preset("gaussian16d")
    worst = 0.0
    for sde_name in args.sdes.split(","):
        sde = SDES[sde_name]()
        x_T = sde.prior_sample((1000, oracle.dim), torch.Generator().manual_seed(7), dtype=torch.float32)
        cost = RealisticCostScore(oracle.score_fn(sde), oracle.dim)
        for nfe in (5, 10, 20):
            for name, opts in OVERHEAD_SAMPLERS:
                runs = []
                for _ in range(9):
                    score = CpuTimedScore(cost)
                    with torch.no_grad():
                        t0 = time.thread_time()
                        build_sampler(name, nfe=nfe, **opts)(sde, score, x_T=x_T.clone())
                        total = time.thread_time() - t0
                    assert score.calls == nfe
                    runs.append((total - score.cpu_s, score.cpu_s))
                own, sc = min(r[0] for r in runs), min(r[1] for r in runs)
                share = own / (own + sc)
                med = sorted(o / (o + c) for o, c in runs)[4]
                worst = max(worst, share)
                lines.append(f"| {sde_name} | {nfe} | {label(name, opts)} | {1e3 * sc:.4g} | {1e3 * own:.3g} | "
                             f"{100 * share:.2f} | {100 * med:.2f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Largest own share (mins) over the table: {100 * worst:.2f} %."]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
