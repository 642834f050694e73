"""Sampler benchmark (issue 4): quality and wall time vs NFE on the oracle problems, ours and peers.

    python benchmarks/bench_samplers.py [--quick] [--n 2000] [--out benchmarks/results/samplers.md]

For each oracle problem (ring2d, mixture64d, gaussian16d) under the VP SDE (and `--sdes vp,ve`
for the VE SDE), every registered sampler of ours (plus the tuned variants in `VARIANTS`) and every
peer of `peers.py` runs at NFE 10, 20, 50, 100, 200, 1000 from the SAME starting noise x_T ~ prior,
with the exact score. Reported per run:
    quality  Bures-Wasserstein error of the sample moments (gaussian16d) or sliced W2 to fresh exact
             data (mixtures), each with its ratio to the noise floor (exact-vs-exact, mean +- std over
             replicates, same sample size and projections); mode-weight error for mixtures
    path     for deterministic samplers, the RMS distance sqrt(mean_i |x_i - x_i^ref|^2) to a float64
             DOP853 solve (rtol = atol = 1e-10) of the probability-flow ODE from the same x_T to t = 0:
             no sampling noise at all
    time     wall time per 1,000 samples, split into time inside the score function (`TimedScore`)
             and the sampler's own time (total - score)
Prior mismatch (closed form for the Gaussian, `sde_gen.evaluation.prior_mismatch`) is printed per SDE.
A second table times every sampler with a "realistic-cost" score: the exact score plus a fixed MLP
forward pass (width 512, 4 layers) multiplied by 0, so the samples are unchanged but each call costs
what a small network costs; it reports the sampler's share of the total.
Peers that cannot be imported are listed with the reason. Timings on a shared machine are noisy:
compare ratios within one run.
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
from peers import build_peers  # noqa: E402

from sde_gen import SDES, make_preset  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.evaluation import TimedScore, oracle_metrics, prior_mismatch, timed_sample  # noqa: E402
from sde_gen.samplers import SAMPLERS, build_sampler  # noqa: E402

NFES = (10, 20, 50, 100, 200, 1000)
PROBLEMS = ("ring2d", "mixture64d", "gaussian16d")
#: tuned settings of ours, run next to each sampler's defaults (chosen on gaussian16d at NFE 10 by a
#: scan of grid x t_min x denoise; reported as separate rows, so the tuning is visible)
VARIANTS = {
    "dpm_solver": [dict(t_min=0.01, denoise=False), dict(t_min=0.03, denoise=False)],
    "heun": [dict(grid="uniform", t_min=0.06)],
}


class RealisticCostScore:
    """The exact score plus 0 x (a fixed-cost MLP forward pass): same samples, a network's cost."""

    def __init__(self, score_fn, dim, width=512, depth=4):
        g = torch.Generator().manual_seed(0)
        layers, d = [], dim + 1
        for _ in range(depth - 1):
            lin = torch.nn.Linear(d, width)
            torch.nn.init.normal_(lin.weight, std=d ** -0.5, generator=g)
            layers += [lin, torch.nn.SiLU()]
            d = width
        layers.append(torch.nn.Linear(d, dim))
        self.mlp = torch.nn.Sequential(*layers)
        self.score_fn = score_fn

    def __call__(self, x, t):
        h = self.mlp(torch.cat([x, t[:, None].to(x.dtype)], 1).to(torch.float32)).to(x.dtype)
        return self.score_fn(x, t) + 0.0 * h


def reference_solution(sde, score_fn, x_T):
    """Float64 probability-flow ODE solve from x_T at T to t = 0 (scipy DOP853, rtol = atol = 1e-10)."""
    import numpy as np
    from scipy.integrate import solve_ivp

    shape, B = x_T.shape, x_T.shape[0]

    def f(t, y):
        x = torch.from_numpy(y).reshape(shape)
        tb = torch.full((B,), t, dtype=torch.float64)
        return sde.probability_flow_drift(x, tb, score_fn(x, tb)).reshape(-1).numpy()

    with torch.no_grad():
        sol = solve_ivp(f, (sde.T, 0.0), x_T.to(torch.float64).reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10)
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)


def quality(samples, oracle, sde, args):
    cache = args.floor_cache.setdefault(id(oracle), {})
    m = oracle_metrics(samples, oracle, sde, args.projections, args.replicates, seed=777, floor_cache=cache)
    if oracle.num_components == 1:
        return m, m.get("bures_wasserstein", math.inf), m["bw_floor_mean"], m["bw_floor_std"], "BW"
    return m, m.get("sw2", math.inf), m["sw2_floor_mean"], m["sw2_floor_std"], "SW2"


def run_one(fn, oracle, sde, x_T, ref, deterministic, args, n):
    """fn(score) -> (samples, nfe); returns a result row."""
    timed = TimedScore(oracle.score_fn(sde), x_T.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples, _ = fn(timed)
    total = time.perf_counter() - t0
    score_s = timed.seconds()
    m, q, fm, fs, qname = quality(samples, oracle, sde, args)
    path = float((samples.double() - ref).pow(2).flatten(1).sum(1).mean().sqrt()) if deterministic else None
    scale = 1e3 * 1000.0 / n  # milliseconds per 1,000 samples
    return dict(
        nfe_spent=timed.calls, q=q, floor=fm, floor_std=fs, qname=qname, mode=m.get("mode_weight_error"),
        path=path, total=total * scale, score=score_s * scale, own=(total - score_s) * scale,
    )


def ours_entries():
    out = []
    for name, cls in SAMPLERS.items():
        out.append((name, {}))
        for v in VARIANTS.get(name, []):
            out.append((name, v))
    return out


def label(name, opts):
    return name + ("" if not opts else " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")


def fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="NFE 10, 20, 50; 500 samples; fewer replicates")
    p.add_argument("--n", type=int, default=None, help="samples per run (default 2000, quick 500)")
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--sdes", default="vp")
    p.add_argument("--nfe", default=None, help="comma-separated NFE list")
    p.add_argument("--replicates", type=int, default=None)
    p.add_argument("--projections", type=int, default=500)
    p.add_argument("--no-realistic", action="store_true", help="skip the realistic-cost timing table")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "samplers.md"))
    args = p.parse_args(argv)
    n = args.n or (500 if args.quick else 2000)
    nfes = [int(v) for v in args.nfe.split(",")] if args.nfe else ([10, 20, 50] if args.quick else list(NFES))
    args.replicates = args.replicates or (4 if args.quick else 10)
    args.floor_cache = {}
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    peers = build_peers()
    cmd = "python benchmarks/bench_samplers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Sampler benchmark (issue 4)",
        "",
        f"Command: `{cmd.strip()}` (full: `python benchmarks/bench_samplers.py`; quick: add `--quick`)",
        "",
        f"Conditions: torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, float32 samples, {n} samples per run, "
        f"noise floors over {args.replicates} replicates; times are per 1,000 samples (ms), measured on a 2-core machine shared "
        "with other jobs: compare ratios within this run only.",
        "",
        "Quality: BW = Bures-Wasserstein error of the sample moments (gaussian16d), SW2 = sliced W2 to fresh exact data "
        "(mixtures); `/floor` divides by the exact-vs-exact noise floor (mean, std in the header). `path` = RMS distance to "
        "a float64 DOP853 probability-flow solve from the same x_T to t = 0 (deterministic samplers only).",
        "",
        "Peers not available:" + ("" if all(pp.error is None for pp in peers) else ""),
    ]
    for pp in peers:
        if pp.error:
            lines.append(f"- {pp.name}: NOT AVAILABLE ({pp.error})")
    if all(pp.error is None for pp in peers):
        lines.append("- none (every peer imported)")
    lines.append("")

    summary = []
    realistic_rows = []
    for sde_name in args.sdes.split(","):
        sde = SDES[sde_name]()
        for problem in args.problems.split(","):
            oracle = make_preset(problem)
            D = oracle.dim
            x_T = sde.prior_sample((n, D), torch.Generator().manual_seed(2024), dtype=torch.float32)
            ref = reference_solution(sde, oracle.score_fn(sde), x_T)
            rows = []
            for nfe in nfes:
                for name, opts in ours_entries():
                    try:
                        s = build_sampler(name, nfe=nfe, **opts)
                    except ValueError as err:
                        rows.append(dict(who="ours", label=label(name, opts), nfe=nfe, error=str(err)))
                        continue
                    det = not getattr(s, "stochastic", True)

                    def fn(score, s=s):
                        r = s(sde, score, x_T=x_T.clone(), generator=torch.Generator().manual_seed(1))
                        return r.samples, r.nfe

                    try:
                        row = run_one(fn, oracle, sde, x_T, ref, det, args, n)
                    except Exception as err:
                        rows.append(dict(who="ours", label=label(name, opts), nfe=nfe, error=f"{type(err).__name__}: {err}"))
                        continue
                    rows.append(dict(who="ours", label=label(name, opts), nfe=nfe, **row))
                    _progress(problem, rows[-1])
                for pp in peers:
                    if pp.error or sde_name not in pp.sdes or pp.budget_free:
                        continue

                    def fn(score, pp=pp, nfe=nfe):
                        return pp.run(sde, score, x_T.clone(), nfe, torch.Generator().manual_seed(1))

                    try:
                        row = run_one(fn, oracle, sde, x_T, ref, pp.deterministic, args, n)
                    except Exception as err:
                        rows.append(dict(who="peer", label=pp.name, nfe=nfe, error=f"{type(err).__name__}: {err}"[:200]))
                        continue
                    rows.append(dict(who="peer", label=pp.name, nfe=nfe, **row))
                    _progress(problem, rows[-1])
            for pp in peers:
                if pp.budget_free and pp.error is None:
                    for tol in pp.tolerances:
                        def fn(score, pp=pp, tol=tol):
                            return pp.run(sde, score, x_T.clone(), None, None, rtol=tol)

                        row = run_one(fn, oracle, sde, x_T, ref, True, args, n)
                        rows.append(dict(who="peer", label=f"{pp.name} rtol=atol={tol:g}", nfe=row["nfe_spent"], **row))

            good = [r for r in rows if "error" not in r]
            if not good:
                continue
            qname, fm, fs = good[0]["qname"], good[0]["floor"], good[0]["floor_std"]
            header = f"## {problem} | {sde_name}"
            extra = ""
            if oracle.num_components == 1:
                pm = prior_mismatch(oracle, sde)
                extra = f"Prior mismatch (closed form): W2(p_T, prior) = {pm['w2_T']:.3g}; left at t = 0 by the exact ODE map: {pm['w2_0_ode']:.3g}. "
            lines += [header, "", f"{extra}Noise floor of {qname}: {fm:.4g} ± {fs:.2g} (n = {n}).", ""]
            lines.append(f"| who | sampler | NFE | spent | {qname} | {qname} / floor | mode err | path | total ms | score ms | own ms | own % |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in sorted(rows, key=lambda r: (r["nfe"], r["who"] != "ours", r["label"])):
                if "error" in r:
                    lines.append(f"| {r['who']} | {r['label']} | {r['nfe']} | - | error: {r['error'][:120]} | | | | | | | |")
                    continue
                own_pct = 100 * r["own"] / r["total"] if r["total"] > 0 else float("nan")
                lines.append(
                    f"| {r['who']} | {r['label']} | {r['nfe']} | {r['nfe_spent']} | {fmt(r['q'])} | {fmt(r['q'] / r['floor'], '.2f')} | "
                    f"{fmt(r['mode'])} | {fmt(r['path'])} | {fmt(r['total'])} | {fmt(r['score'])} | {fmt(r['own'])} | {fmt(own_pct, '.0f')} |"
                )
            lines.append("")
            # targets at small NFE: our best vs the best peer at <= the same NFE
            for budget in (10, 20):
                ours = [r for r in good if r["who"] == "ours" and r["nfe"] == budget]
                theirs = [r for r in good if r["who"] == "peer" and r["nfe_spent"] <= budget]
                if not ours:
                    continue
                bo = min(ours, key=lambda r: r["q"])
                bp = min(theirs, key=lambda r: r["q"]) if theirs else None
                ok = bp is None or bo["q"] <= bp["q"]
                summary.append(
                    f"- {problem}/{sde_name} NFE {budget}: our best {bo['label']} {qname} {bo['q']:.4g} ({bo['q'] / fm:.2f}x floor) vs best peer "
                    + (f"{bp['label']} {bp['q']:.4g} ({bp['q'] / fm:.2f}x floor)" if bp else "none")
                    + f": {'MET' if ok else 'NOT MET'}"
                )
                if oracle.num_components == 1 and budget == 10:
                    summary.append(f"- {problem}/{sde_name} NFE 10: our best BW / floor = {bo['q'] / fm:.2f} (target <= 1.2): {'MET' if bo['q'] / fm <= 1.2 else 'NOT MET'}")
            # sampler's own time at equal NFE vs the fastest peer (exact score)
            for budget in nfes:
                ours = [r for r in good if r["who"] == "ours" and r["nfe"] == budget]
                theirs = [r for r in good if r["who"] == "peer" and r["nfe"] == budget]
                if ours and theirs:
                    fastest = min(theirs, key=lambda r: r["own"])
                    mine = {r["label"]: r["own"] for r in ours}
                    slower = [k for k, v in mine.items() if v > fastest["own"]]
                    summary.append(
                        f"- {problem}/{sde_name} NFE {budget}: fastest peer own time {fastest['own']:.3g} ms ({fastest['label']}); "
                        f"ours {min(mine.values()):.3g}-{max(mine.values()):.3g} ms; ours slower than it: {', '.join(slower) if slower else 'none'}"
                    )
            print("\n".join(lines[-len(rows) - 6:]), flush=True)

        # realistic-cost timing on the Gaussian, NFE 20 and 100
        if args.no_realistic:
            continue
        oracle = make_preset("gaussian16d")
        nr = 1000
        x_T = sde.prior_sample((nr, oracle.dim), torch.Generator().manual_seed(7), dtype=torch.float32)
        cost = RealisticCostScore(oracle.score_fn(sde), oracle.dim)
        for budget in (20, 100):
            entries = [("ours", label(nm, o), (lambda score, nm=nm, o=o, b=budget: build_sampler(nm, nfe=b, **o)(sde, score, x_T=x_T.clone(), generator=torch.Generator().manual_seed(1)))) for nm, o in ours_entries()]
            entries += [("peer", pp.name, (lambda score, pp=pp, b=budget: pp.run(sde, score, x_T.clone(), b, torch.Generator().manual_seed(1)))) for pp in peers if pp.error is None and sde_name in pp.sdes and not pp.budget_free]
            for who, lab, f in entries:
                try:
                    with torch.no_grad():
                        _, tm = _time(f, cost, x_T.device)
                except Exception as err:
                    realistic_rows.append((sde_name, budget, who, lab, None, None, str(err)[:80]))
                    continue
                realistic_rows.append((sde_name, budget, who, lab, tm, None, None))

    lines += ["## Realistic-cost score (exact score + 0 x MLP 17-512-512-512-16), gaussian16d, 1,000 samples", ""]
    lines += ["| SDE | NFE | who | sampler | calls | total ms | score ms | own ms | own % |", "|---|---|---|---|---|---|---|---|---|"]
    for sde_name, budget, who, lab, tm, _, err in realistic_rows:
        if tm is None:
            lines.append(f"| {sde_name} | {budget} | {who} | {lab} | error: {err} | | | | |")
            continue
        lines.append(
            f"| {sde_name} | {budget} | {who} | {lab} | {tm['score_calls']} | {1e3 * tm['total_s']:.3g} | {1e3 * tm['score_s']:.3g} | "
            f"{1e3 * tm['sampler_s']:.3g} | {100 * tm['sampler_s'] / tm['total_s']:.1f} |"
        )
        if who == "ours":
            summary.append(f"- realistic cost {sde_name} NFE {budget} {lab}: own time {100 * tm['sampler_s'] / tm['total_s']:.1f}% of total (target < 5%)")
    lines += ["", "## Targets (this run)", ""] + summary + [""]
    text = "\n".join(lines)
    print("\n".join(summary))
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


def _progress(problem, r):
    print(f"[{time.strftime('%H:%M:%S')}] {problem} NFE {r['nfe']} {r['label']}: total {r['total']:.3g} ms/1k, {r['qname']} {r['q']:.3g}", file=sys.stderr, flush=True)


def _time(f, score_fn, device):
    timed = TimedScore(score_fn, device)
    t0 = time.perf_counter()
    out = f(timed)
    total = time.perf_counter() - t0
    s = timed.seconds()
    return out, {"total_s": total, "score_s": s, "sampler_s": total - s, "score_calls": timed.calls}


if __name__ == "__main__":
    main()
