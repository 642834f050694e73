"""Guidance benchmark (issue 11): class purity and per-class quality vs guidance scale and NFE, and
the cost of one guided score evaluation.

    python benchmarks/bench_guidance.py [--quick] [--problems ring2d,mixture64d] [--out benchmarks/results/guidance.md]

On the labelled oracle problems (each component of a preset is its own class), under the VP SDE:

quality  for classifier-free guidance on the exact conditional model (`GaussianMixture.conditional_model`,
         `sde_gen.guidance.classifier_free`) and classifier guidance with the exact noise-conditional
         classifier (`GaussianMixture.classifier`, `classifier_guided`), at scales 0, 1, 2, 4, NFE 10,
         20, 50, with a default SDE sampler (euler_maruyama) and an ODE solver (dpm_solver): the same
         labels (n per class, every class) and the same starting noise for every run. Reported:
         class purity (share of samples whose exact MAP class under p_0 is the requested one; the
         lowest class and the mean), per-class sliced W2 to fresh exact samples of p_0(x | y) over
         its noise floor (max and mean over classes; `sde_gen.evaluation.class_metrics`), the NFE
         spent (score-function calls) and the batch-equivalent cost NFE x `batch_cost` (a CFG call at
         s not in {0, 1} is one network forward of batch 2B).
         At s = 1 both methods sample the class law exactly (up to discretisation); at s > 1 they
         sample the same tilted marginals p_t(x) p_t(y | x)^s with the exact scores, so their rows
         agree to rounding: the differences between the methods in practice come from the trained
         approximations (the hook below).
cost     wall time of one guided evaluation relative to one conditional evaluation (batch B), for
         the exact oracle and for realistic-cost networks at random init (the cost matters, not the
         weights): a conditional residual MLP `ScoreModel` of the ring2d training config's size, and
         for classifier guidance the unconditional score of the same network plus a classifier MLP
         of the same width (forward + backward through autograd). Fastest of interleaved repeats;
         on CUDA, synchronised.

Trained models: `--cfg-run DIR` adds classifier-free rows for a trained class-conditional run
(`load_trained(DIR)`, its model must have `num_classes` equal to the problem's);
`--classifier-run DIR` adds classifier-guidance rows for a trained noise-conditional classifier
(`load_classifier(DIR)`) guiding the exact unconditional score and, with `--cfg-run`, the no-label
output of the trained conditional model (an unconditional model of the same training).
Timings on a shared machine are noisy: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import torch

from sde_gen import MLP, VPSDE, ScoreModel, make_preset
from sde_gen.evaluation import class_metrics
from sde_gen.guidance import classifier_free, classifier_guided
from sde_gen.io import atomic_write_text
from sde_gen.samplers import build_sampler

SCALES = (0.0, 1.0, 2.0, 4.0)
NFES = (10, 20, 50)
SAMPLERS = ("euler_maruyama", "dpm_solver")


# ---------------------------------------------------------------- what is sampled
def exact_entries(oracle, sde):
    """(label, make(y, scale) -> GuidedScore) for the exact oracle."""
    model, clf, score = oracle.conditional_model(sde), oracle.classifier(sde), oracle.score_fn(sde)
    return [
        ("CFG, exact model", lambda y, s: classifier_free(model, y, s)),
        ("classifier, exact", lambda y, s: classifier_guided(score, clf, y, s)),
    ]


def trained_entries(args, problem, sde):
    """Rows for trained models, (label, sde, make(y, scale) -> GuidedScore).

    `--cfg-run`: classifier-free guidance of the trained conditional model. `--classifier-run`:
    classifier guidance by the trained classifier, of the exact unconditional score of the
    classifier's SDE and (with `--cfg-run` on the same SDE) of the trained model's no-label output.
    A run trained on another problem adds nothing for this one.
    """
    from sde_gen.checkpoint import load_classifier, load_trained

    entries, cfg_model = [], None
    if args.cfg_run:
        trained = load_trained(args.cfg_run, device=args.device)
        if getattr(trained.dataset, "name", None) == problem:
            if getattr(trained.model, "num_classes", None) is None:
                raise SystemExit(f"--cfg-run {args.cfg_run}: the model is unconditional (no num_classes)")
            cfg_model, cfg_sde = trained.model, trained.sde
            entries.append((f"CFG, trained ({trained.step} steps)", cfg_sde, lambda y, s: classifier_free(cfg_model, y, s)))
    if args.classifier_run:
        clf_run = load_classifier(args.classifier_run, device=args.device)
        if getattr(clf_run.dataset, "name", None) == problem:
            clf, clf_sde = clf_run.model, clf_run.sde
            oracle = make_preset(problem).to(args.device)
            exact_score = oracle.score_fn(clf_sde)
            label = f"classifier, trained ({clf_run.step} steps)"
            entries.append((f"{label} + exact score", clf_sde, lambda y, s: classifier_guided(exact_score, clf, y, s)))
            if cfg_model is not None and type(cfg_sde) is type(clf_sde):
                def no_label(x, t):
                    return cfg_model(x, t, torch.full((x.shape[0],), cfg_model.num_classes, dtype=torch.long, device=x.device))
                entries.append((f"{label} + trained no-label score", clf_sde,
                                lambda y, s: classifier_guided(no_label, clf, y, s)))
    return entries


def run_quality(oracle, sde, label, make, args, x_T, y, rows, problem):
    for sampler_name in args.samplers:
        for nfe in args.nfes:
            sampler = build_sampler(sampler_name, nfe=nfe)
            for s in args.scales:
                guided = make(y, s)
                t0 = time.perf_counter()
                res = sampler(sde, guided, x_T=x_T.clone(), generator=torch.Generator(x_T.device).manual_seed(1))
                wall = time.perf_counter() - t0
                m = class_metrics(res.samples, y, oracle, num_projections=args.projections,
                                  replicates=args.replicates, seed=777)
                ratios = [r["sw2_ratio"] for r in m["per_class"].values() if "sw2_ratio" in r]
                rows.append(dict(
                    problem=problem, method=label, sampler=sampler_name, nfe=nfe, scale=s, spent=res.nfe,
                    batch_eq=res.nfe * guided.batch_cost, purity=m.get("class_purity", math.nan),
                    purity_min=m.get("class_purity_min", math.nan),
                    ratio_max=max(ratios) if ratios else math.nan,
                    ratio_mean=sum(ratios) / len(ratios) if ratios else math.nan, wall=wall,
                ))
                print(f"{problem} {label} {sampler_name} nfe={nfe} s={s:g}: purity {rows[-1]['purity']:.4f} "
                      f"(min {rows[-1]['purity_min']:.4f}), W2/floor max {rows[-1]['ratio_max']:.2f}", flush=True)


# ---------------------------------------------------------------- what one evaluation costs
class ClassifierMLP(torch.nn.Module):
    """A time-conditional classifier of the score network's size: [x, t] -> logits (B, C)."""

    def __init__(self, dim, num_classes, width, depth):
        super().__init__()
        layers, d = [], dim + 1
        for _ in range(depth):
            layers += [torch.nn.Linear(d, width), torch.nn.SiLU()]
            d = width
        layers.append(torch.nn.Linear(d, num_classes))
        self.net = torch.nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


def min_seconds(fns, device, repeats, warmup=3):
    """Fastest of `repeats` calls of each of `fns`, timed in interleaved rounds: on a shared machine
    the least-disturbed call is the reproducible figure, and a load spike hits every function alike."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    return [min(acc) for acc in times]


def cost_rows(oracle, sde, batch, device, repeats, problem):
    """Seconds per call (fastest of interleaved repeats) and ratio to one conditional evaluation, exact and network."""
    C, D = oracle.num_classes, oracle.dim
    g = torch.Generator(device).manual_seed(5)
    x = torch.randn(batch, D, generator=g, device=device)
    t = torch.rand(batch, generator=g, device=device) * 0.9 + 0.05
    y = torch.arange(batch, device=device) % C
    torch.manual_seed(0)
    # the ring2d training config's MLP (conf/model/mlp.yaml: hidden 128, depth 3, time_embed_dim 64)
    net = ScoreModel(MLP(dim=D, hidden=128, depth=3, time_embed_dim=64, num_classes=C), sde).to(device).eval()
    clf = ClassifierMLP(D, C, 128, 4).to(device).eval()
    oracle_d = oracle.to(device)
    exact_model = oracle_d.conditional_model(sde)
    # the plain conditional forward on a batch of 2B: what CFG's one call costs before combining
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, C)])
    cases = {
        "exact oracle": dict(
            cond=lambda: exact_model(x, t, y),
            double=lambda: exact_model(x2, t2, y2),
            cfg=classifier_free(exact_model, y, 2.0),
            clf=classifier_guided(oracle_d.score_fn(sde), oracle_d.classifier(sde), y, 2.0),
        ),
        "MLP 128x3 + classifier MLP 128x4 (random init)": dict(
            cond=lambda: net(x, t, y),
            double=lambda: net(x2, t2, y2),
            cfg=classifier_free(net, y, 2.0),
            clf=classifier_guided(lambda xx, tt: net(xx, tt), clf, y, 2.0),
        ),
    }
    out = []
    with torch.no_grad():  # as inside every sampler
        for name, c in cases.items():
            base, double, cfg, cg = min_seconds(
                [c["cond"], c["double"], lambda: c["cfg"](x, t), lambda: c["clf"](x, t)], device, repeats)
            out.append(dict(problem=problem, score=name, batch=batch, cond_ms=1e3 * base, cfg_ms=1e3 * cfg,
                            clf_ms=1e3 * cg, double_ratio=double / base, cfg_ratio=cfg / base, clf_ratio=cg / base))
            print(f"{problem} {name} B={batch}: conditional {1e3 * base:.3g} ms, 2B forward x{double / base:.2f}, "
                  f"CFG x{cfg / base:.2f}, classifier x{cg / base:.2f}", flush=True)
    return out


# ---------------------------------------------------------------- the report
def fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ring2d only, NFE 10 and 50, 100 samples per class")
    p.add_argument("--problems", default="ring2d,mixture64d")
    p.add_argument("--n", type=int, default=None, help="samples per class (default 250, quick 100)")
    p.add_argument("--nfe", default=None, help="comma-separated NFE list (default 10,20,50)")
    p.add_argument("--scales", default=None, help="comma-separated guidance scales (default 0,1,2,4)")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--replicates", type=int, default=10, help="noise-floor replicates per class")
    p.add_argument("--projections", type=int, default=200)
    p.add_argument("--batch", type=int, default=1000, help="batch of the cost measurement")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per cost figure (the fastest is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cfg-run", default=None, help="a trained class-conditional run directory (adds CFG rows)")
    p.add_argument("--classifier-run", default=None,
                   help="a trained noise-conditional classifier run directory (adds classifier-guidance rows)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "guidance.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.problems = "ring2d"
    args.nfes = [int(v) for v in args.nfe.split(",")] if args.nfe else ([10, 50] if args.quick else list(NFES))
    args.scales = [float(v) for v in args.scales.split(",")] if args.scales else list(SCALES)
    args.samplers = args.samplers.split(",")
    n_per_class = args.n or (100 if args.quick else 250)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    rows, costs, floors = [], [], {}
    for problem in args.problems.split(","):
        sde = VPSDE()
        oracle = make_preset(problem).to(device)
        C = oracle.num_classes
        y = torch.arange(C, device=device).repeat_interleave(n_per_class)
        x_T = sde.prior_sample((C * n_per_class, oracle.dim), torch.Generator(device).manual_seed(2024),
                               device=device, dtype=torch.float32)
        floor = class_metrics(oracle.sample(C * n_per_class, torch.Generator(device).manual_seed(3), device=device, y=y),
                              y, oracle, num_projections=args.projections, replicates=args.replicates, seed=777)
        floors[problem] = floor
        for label, make in exact_entries(oracle, sde):
            run_quality(oracle, sde, label, make, args, x_T, y, rows, problem)
        for label, trained_sde, make in trained_entries(args, problem, sde):
            # the trained run's own SDE and prior (same seed: the same draw when the SDE is the same)
            x_T_run = trained_sde.prior_sample((C * n_per_class, oracle.dim), torch.Generator(device).manual_seed(2024),
                                               device=device, dtype=torch.float32)
            run_quality(oracle, trained_sde, label, make, args, x_T_run, y, rows, problem)
        costs += cost_rows(oracle, sde, args.batch, device, args.repeats, problem)

    cmd = "python benchmarks/bench_guidance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Guidance benchmark (issue 11)",
        "",
        f"Command: `{cmd.strip()}` (full: `python benchmarks/bench_guidance.py`; quick: add `--quick`)",
        "",
        f"Conditions: torch {torch.__version__}, {dev_name}, {torch.get_num_threads()} thread(s), VP SDE, float32 samples, "
        f"{n_per_class} samples per class (every class, the same labels and the same x_T for every run), per-class "
        f"noise floors over {args.replicates} replicates with {args.projections} projections. Timings on a shared "
        "machine: compare ratios within this run only.",
        "",
        "Columns: `purity` = share of samples whose exact MAP class under p_0 is the requested one (`min` = lowest class); "
        "`W2/floor` = per-class sliced W2 to fresh exact samples of p_0(x | y) divided by the exact-vs-exact noise floor of "
        "the same size (max and mean over classes); `NFE` = score-function calls; `batch-eq` = NFE x batch cost (a CFG call "
        "at s not in {0, 1} is one forward of batch 2B). At s = 1 both methods target the class law; at s > 1 the tilted "
        "marginals p_t(x) p_t(y | x)^s, which no single diffusion has as its marginals (W2/floor then measures the "
        "departure from the class law that the sharpening buys).",
        "",
    ]
    for problem in args.problems.split(","):
        f = floors[problem]
        lines += [f"## {problem}", "",
                  f"Exact class samples (the reference a perfect sampler reaches): purity {f['class_purity']:.4f} "
                  f"(min {f['class_purity_min']:.4f}), W2/floor max {f['sw2_ratio_max']:.2f}.", "",
                  "| method | sampler | NFE | s | NFE spent | batch-eq | purity | purity min | W2/floor max | W2/floor mean |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["problem"] != problem:
                continue
            lines.append(f"| {r['method']} | {r['sampler']} | {r['nfe']} | {r['scale']:g} | {r['spent']} | {r['batch_eq']} | "
                         f"{r['purity']:.4f} | {r['purity_min']:.4f} | {fmt(r['ratio_max'], '.2f')} | {fmt(r['ratio_mean'], '.2f')} |")
        lines.append("")
    lines += ["## Cost of one guided evaluation", "",
              "Wall time of one call at scale 2 relative to one conditional evaluation `model(x, t, y)` of batch B "
              f"(fastest of {args.repeats} interleaved calls under `torch.no_grad()`): CFG = one forward of batch 2B (the plain "
              "forward of 2B is timed alone next to it: on a CPU it can cost more than two of B); classifier guidance "
              "= the unconditional score + a classifier forward and backward (autograd).", "",
              "| problem | score | B | conditional ms | plain forward of 2B / conditional | CFG ms | CFG / conditional | "
              "classifier ms | classifier / conditional |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['problem']} | {c['score']} | {c['batch']} | {c['cond_ms']:.3g} | {c['double_ratio']:.2f} | "
                     f"{c['cfg_ms']:.3g} | {c['cfg_ratio']:.2f} | {c['clf_ms']:.3g} | {c['clf_ratio']:.2f} |")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
