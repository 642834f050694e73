"""The EDM recipe (Karras et al. 2022) vs the default recipe on mixture64d, at equal training steps and
equal NFE.

Two runs of `sde-gen-train` with the same steps, batch, network, optimiser and seed:
* default: `experiment=mixture64d` (VP SDE, noise-prediction-free score MLP, DSM with the sigma^2
  weighting and t ~ U[eps, T]);
* EDM: `experiment=edm_mixture64d` (sigma(t) = t, the EDM preconditioning with sigma_data, log-normal
  noise levels, the EDM loss weight).
Measured on each EMA model, against the exact oracle:
* score error by noise level sigma = s(t) / a(t) (the same sigmas for both SDEs, each at its own t):
  E||s_theta - grad log p_t||^2 / E||grad log p_t||^2 on 1024 exact x_t per sigma (dimensionless, so the
  two SDEs' different state scalings cancel);
* sample quality at NFE 10 / 20 / 35: the deterministic Heun sampler on the Karras grid (EDM's own
  sampler, defined for every SDE) for both, plus the default recipe's Euler-Maruyama on its uniform grid;
  sliced W2 over its noise floor and the mode-weight error, 2000 samples;
* bits/dim: the probability-flow ODE (dopri5, rtol = atol = 1e-4, Hutchinson divergence with one
  Rademacher probe: unbiased, its noise is in the standard error) on 100 test points, next to the exact
  -log p(x) of the same points.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_edm.py [--steps S]` (writes benchmarks/results/edm.md).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sde_gen import load_trained, log_likelihood, make_preset, sample  # noqa: E402
from sde_gen.diagnostics import score_error_vs_t  # noqa: E402
from sde_gen.evaluation import oracle_metrics  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402

F64 = torch.float64
RECIPES = {"default": "experiment=mixture64d", "edm": "experiment=edm_mixture64d"}
SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
NFES = (10, 20, 35)


def train(recipe: str, steps: int, out: str, recipes=None, extra=("train.eval_samples=2000",)):
    """Train one recipe (`recipes[recipe]`: its experiment override) through the app; (run dir, wall seconds)."""
    recipes = RECIPES if recipes is None else recipes
    run_dir = os.path.join(out, recipe)
    over = [recipes[recipe], f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
            *extra, "train.progress=false", "seed=0", "device=cpu", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sde_gen.train", *over], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return run_dir, time.perf_counter() - t0


def measure(run_dir: str, oracle, floor_cache, ema: bool = True):
    trained = load_trained(run_dir, ema=ema)
    model, sde = trained.model.to(F64).eval(), trained.sde.to(F64)
    lam = -torch.log(torch.tensor(SIGMAS, dtype=F64))  # half log-SNR log(a / s) = -log sigma
    ts = sde.time_at_half_log_snr(lam)
    err = score_error_vs_t(model, sde, oracle, ts=ts, n=1024, generator=torch.Generator().manual_seed(7), dtype=F64)
    rel = (err["error"] / err["reference"]).tolist()
    quality = {}
    samplers = [("heun", {"grid": "karras"})] + ([("euler_maruyama", {})] if "VPSDE" in type(sde).__name__ else [])
    for name, opts in samplers:
        for nfe in NFES:
            x = sample(sde, model, shape=(2000, oracle.dim), sampler=name, nfe=nfe, dtype=F64,
                       generator=torch.Generator().manual_seed(11), **opts).samples
            m = oracle_metrics(x, oracle, floor_cache=floor_cache)
            quality[name, nfe] = (m["sw2_ratio"], m["mode_weight_error"])
    x = oracle.sample(100, torch.Generator().manual_seed(13), dtype=F64)
    t0 = time.perf_counter()
    res = log_likelihood(sde, model, x, rtol=1e-4, atol=1e-4, divergence="hutchinson",
                         generator=torch.Generator().manual_seed(17))
    d = oracle.dim
    bpd = -res.logp / (d * math.log(2.0))
    exact = -oracle.log_prob(x) / (d * math.log(2.0))
    return dict(sde=type(sde).__name__, t_sigma=ts.tolist(), rel=rel, quality=quality, bpd=float(bpd.mean()),
                bpd_gap=float((bpd - exact).mean()), bpd_gap_se=float((bpd - exact).std()) / math.sqrt(100),
                exact=float(exact.mean()), nfe_ll=res.nfe, ll_wall=time.perf_counter() - t0)


def quality_rows(results, recipes, cell) -> list:
    """Markdown rows "| recipe | sampler (grid) | one cell per NFE |" of `results[recipe]["quality"]`
    ({(sampler, nfe): value}), each value written by `cell`."""
    rows = []
    for recipe in recipes:
        by_sampler = {}
        for (name, nfe), v in results[recipe]["quality"].items():
            by_sampler.setdefault(name, {})[nfe] = v
        for name, vals in by_sampler.items():
            grid = "Karras grid" if name == "heun" else "uniform grid"
            rows.append(f"| {recipe} | {name} ({grid}) | " + " | ".join(cell(vals[n]) for n in NFES) + " |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="training steps of each recipe")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="measure the EMA weights or the raw training weights (EMA 0.999 after a few hundred steps "
                        "still holds most of the initialisation)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "edm.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    oracle = make_preset("mixture64d")
    results, walls, floor_cache = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            run_dir, walls[recipe] = train(recipe, args.steps, tmp)
            results[recipe] = measure(run_dir, oracle, floor_cache, ema=args.weights == "ema")
            print(recipe, results[recipe], flush=True)
    cmd = f"OMP_NUM_THREADS=1 python benchmarks/bench_edm.py --steps {args.steps} --weights {args.weights}"
    floors = next(iter(floor_cache.values()))
    lines = [
        f"<!-- reproduce: {cmd} -->",
        f"Command: `{cmd}` (cpu, 1 thread; both recipes: the 512 x 4 MLP, batch 512, Adam lr 1e-3 with the cosine "
        f"schedule, EMA 0.999, seed 0, {args.steps} steps each; measured in float64 on the {args.weights} weights). Training wall "
        f"time (whole app, start-up and its evaluation included): default {walls['default']:.0f} s, EDM {walls['edm']:.0f} s.",
        "",
        "### Score error by noise level (relative: E||s_theta - s||^2 / E||s||^2, 1024 exact x_t each)",
        "",
        "| sigma = s/a | " + " | ".join(f"{s:g}" for s in SIGMAS) + " |",
        "|---|" + "---:|" * len(SIGMAS),
    ]
    for recipe in RECIPES:
        lines.append(f"| {recipe} ({results[recipe]['sde']}) | " + " | ".join(f"{v:.4f}" for v in results[recipe]["rel"]) + " |")
    lines += ["", f"### Sample quality (2000 samples; sliced W2 / its noise floor {floors['sw2_floor_mean']:.4f} +- "
              f"{floors['sw2_floor_std']:.4f}; mode-weight error, floor {floors['mode_weight_floor_mean']:.4f} +- "
              f"{floors['mode_weight_floor_std']:.4f})", "",
              "| recipe | sampler | " + " | ".join(f"NFE {n}: SW2/floor, mode err" for n in NFES) + " |",
              "|---|---|" + "---:|" * len(NFES)]
    lines += quality_rows(results, RECIPES, lambda v: f"{v[0]:.2f}, {v[1]:.3f}")
    lines += ["", "### Bits/dim (probability-flow ODE, Hutchinson, 100 test points; exact -log p(x) "
              f"{results['default']['exact']:.4f} bits/dim)", "",
              "| recipe | bits/dim | gap to exact | NFE | wall s |", "|---|---:|---:|---:|---:|"]
    for recipe in RECIPES:
        r = results[recipe]
        lines.append(f"| {recipe} | {r['bpd']:.4f} | {r['bpd_gap']:.4f} +- {r['bpd_gap_se']:.4f} | {r['nfe_ll']} | {r['ll_wall']:.0f} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
