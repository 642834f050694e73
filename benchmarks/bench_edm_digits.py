"""The EDM recipe (Karras et al. 2022) vs the default recipe on the 8x8 digits, at equal training steps and
equal NFE (the digits half of issue 15's EDM benchmark; benchmarks/bench_edm.py does mixture64d).

Two runs of `sde-gen-train` with the same U-Net, steps, batch, optimiser, warm-up and seed:
* default: `experiment=digits` (VP SDE, score parameterisation, DSM with the sigma^2 weighting and
  t ~ U[eps, T]);
* EDM: `experiment=edm_digits` (sigma(t) = t, the EDM preconditioning with sigma_data = 0.51, log-normal
  noise levels, the EDM loss weight).
There is no oracle for digits, so measured on each model (raw weights by default: an EMA of 0.999 after a
few hundred steps still holds most of the initialisation):
* the DSM loss by noise level on the test digits, a proxy for the score error (at a fixed t the DSM loss is
  the score error plus a model-independent constant, Vincent 2011): at sigma = s/a, the per-dimension
  noise-prediction error E||s(t) s_theta(x_t, t) + z||^2 / D, x_t = a x0 + s z, which is invariant to the
  state scaling a(t) and so comparable between the two SDEs at equal sigma (each at its own t);
* sample quality at NFE 10 / 20 / 35: the deterministic Heun sampler on the Karras grid for both, plus the
  default recipe's Euler-Maruyama on its uniform grid; sliced W2 (500 projections, model space) of as many
  samples as there are test digits to the test digits, next to that of equally many training digits (the
  value a perfect sampler reaches at this size);
* bits/dim of 100 test digits: the probability-flow ODE with uniform dequantisation (dopri5,
  rtol = atol = 1e-4, one Hutchinson probe), as `sde-gen-eval` does.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_edm_digits.py [--steps S]` (writes
benchmarks/results/edm_digits.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import bench_edm  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from sde_gen import load_trained, sample  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.likelihood import evaluate_dataset  # noqa: E402
from sde_gen.metrics import sliced_wasserstein  # noqa: E402
from sde_gen.utils import append_dims  # noqa: E402

RECIPES = {"default": "experiment=digits", "edm": "experiment=edm_digits"}
SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
NFES = (10, 20, 35)


def train(recipe: str, steps: int, batch: int, out: str):
    """The mixture benchmark's training run with the digits recipes and a small evaluation."""
    return bench_edm.train(recipe, steps, out, recipes=RECIPES, extra=(
        f"train.batch_size={batch}", "lr_scheduler.warmup=50", "train.eval_samples=16", "sampler.nfe=10",
        "train.plots=false"))


@torch.no_grad()
def dsm_by_sigma(model, sde, x0: torch.Tensor, reps: int = 4):
    """Per-dimension noise-prediction error E||s(t) s_theta(x_t, t) + z||^2 / D at each sigma in SIGMAS, per digit
    ((N,) each, averaged over `reps` draws; the same draws for every model, so differences are paired)."""
    g = torch.Generator().manual_seed(7)
    lam = -torch.log(torch.tensor(SIGMAS, dtype=torch.float64))  # half log-SNR log(a / s) = -log sigma
    ts = sde.time_at_half_log_snr(lam)
    out = []
    for t in ts.tolist():
        tot = torch.zeros(x0.shape[0], dtype=torch.float64)
        for _ in range(reps):
            tt = torch.full((x0.shape[0],), t, dtype=x0.dtype)
            mean, std = sde.marginal(x0, tt)
            z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            xt = mean + append_dims(std, x0.ndim) * z
            eps_err = append_dims(std, x0.ndim) * model(xt, tt) + z
            tot += eps_err.flatten(1).pow(2).mean(1).double()
        out.append(tot / reps)
    return ts.tolist(), out


def measure(run_dir: str, ema: bool, n_bpd: int):
    trained = load_trained(run_dir, ema=ema)
    model, sde, digits = trained.model.eval(), trained.sde, trained.dataset
    test = digits.test
    ts, dsm = dsm_by_sigma(model, sde, test)
    quality = {}
    samplers = [("heun", {"grid": "karras"})] + ([("euler_maruyama", {})] if "VPSDE" in type(sde).__name__ else [])
    for name, opts in samplers:
        for nfe in NFES:
            with torch.no_grad():
                x = sample(sde, model, shape=tuple(test.shape), sampler=name, nfe=nfe,
                           generator=torch.Generator().manual_seed(11), **opts).samples
            quality[name, nfe] = float(sliced_wasserstein(x, test, 500, generator=torch.Generator().manual_seed(3)))
    nll = evaluate_dataset(sde, model, digits.test_pixels[:n_bpd], dataset_or_map=digits, batch_size=n_bpd,
                           generator=torch.Generator().manual_seed(17), divergence="hutchinson", num_probes=1,
                           rtol=1e-4, atol=1e-4)
    return dict(sde=type(sde).__name__, t_sigma=ts, dsm=[float(v.mean()) for v in dsm], dsm_per=dsm, bpd_per=nll.values, quality=quality, bpd=nll.mean, bpd_se=nll.std_error,
                nfe_ll=nll.nfe, ll_wall=nll.seconds, digits=digits)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps of each recipe")
    p.add_argument("--batch", type=int, default=64, help="training batch of each recipe")
    p.add_argument("--weights", choices=("ema", "raw"), default="raw")
    p.add_argument("--n-bpd", type=int, default=100, help="test digits for bits/dim")
    p.add_argument("--out", default=os.path.join(HERE, "results", "edm_digits.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    results, walls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            run_dir, walls[recipe] = train(recipe, args.steps, args.batch, tmp)
            print(recipe, "trained in", round(walls[recipe]), "s", flush=True)
            t0 = time.perf_counter()
            results[recipe] = measure(run_dir, args.weights == "ema", args.n_bpd)
            print(recipe, {k: v for k, v in results[recipe].items() if k not in ("digits", "dsm_per", "bpd_per")},
                  "measured in", round(time.perf_counter() - t0), "s", flush=True)
    digits = results["default"]["digits"]
    test = digits.test
    g = torch.Generator().manual_seed(3)
    idx = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(5))[: len(test)]
    floor = float(sliced_wasserstein(digits.train[idx], test, 500, generator=g))
    # the sampling noise of the SW2 estimate at this size: SW2 of 10 disjoint-seed training subsets to the test set
    spread = torch.tensor([float(sliced_wasserstein(
        digits.train[torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(100 + k))[: len(test)]],
        test, 500, generator=torch.Generator().manual_seed(200 + k))) for k in range(10)])
    n = len(test)
    d_dsm = [(e - d) for d, e in zip(results["default"]["dsm_per"], results["edm"]["dsm_per"])]
    d_bpd = results["edm"]["bpd_per"] - results["default"]["bpd_per"]
    cmd = (f"OMP_NUM_THREADS=1 python benchmarks/bench_edm_digits.py --steps {args.steps} --batch {args.batch} "
           f"--weights {args.weights} --n-bpd {args.n_bpd}")
    lines = [
        f"<!-- reproduce: {cmd} -->",
        f"Command: `{cmd}` (cpu, 1 thread; both recipes: the digits U-Net, batch {args.batch}, Adam lr 1e-3 with the "
        f"cosine schedule and a 50-step warm-up, seed 0, {args.steps} steps each; measured in float32 on the "
        f"{args.weights} weights). Training wall time (whole app, start-up included, on a shared machine): "
        f"default {walls['default']:.0f} s, EDM {walls['edm']:.0f} s.",
        "",
        f"### DSM loss by noise level on the {len(test)} test digits (a proxy for the score error: no oracle)",
        "",
        "Per-dimension noise-prediction error E||s(t) s_theta(x_t, t) + z||^2 / D, 4 noise draws per digit; at a "
        "fixed sigma it is the score error (scaled by s(t)^2 / D) plus a constant that does not depend on the model, "
        "so the lower row has the lower score error at that sigma.",
        "",
        "| sigma = s/a | " + " | ".join(f"{s:g}" for s in SIGMAS) + " |",
        "|---|" + "---:|" * len(SIGMAS),
    ]
    for recipe in RECIPES:
        lines.append(f"| {recipe} ({results[recipe]['sde']}) | " + " | ".join(f"{v:.4f}" for v in results[recipe]["dsm"]) + " |")
    lines.append("| edm - default (paired, +- SE over digits) | " + " | ".join(
        f"{float(v.mean()):+.4f} +- {float(v.std()) / n ** 0.5:.4f}" for v in d_dsm) + " |")
    lines += ["", f"### Sample quality: sliced W2 to the {len(test)} test digits ({len(test)} samples, 500 projections, "
              f"model space); {len(test)} training digits: {floor:.4f} (over 10 random subsets: {float(spread.mean()):.4f} +- "
              f"{float(spread.std()):.4f}, the estimator's noise at this size)", "",
              "| recipe | sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
              "|---|---|" + "---:|" * len(NFES)]
    lines += bench_edm.quality_rows(results, RECIPES, lambda v: f"{v:.4f}")
    lines += ["", f"### Bits/dim of {args.n_bpd} test digits (probability-flow ODE, uniform dequantisation, one "
              f"Hutchinson probe; the uniform code is log2(17) = 4.087)", "",
              "| recipe | bits/dim | drift NFE | wall s |", "|---|---:|---:|---:|"]
    for recipe in RECIPES:
        r = results[recipe]
        lines.append(f"| {recipe} | {r['bpd']:.3f} +- {r['bpd_se']:.3f} | {r['nfe_ll']} | {r['ll_wall']:.0f} |")
    lines.append(f"| edm - default (paired: same digits, dequantisation and probe draws) | "
                 f"{float(d_bpd.mean()):+.3f} +- {float(d_bpd.std()) / len(d_bpd) ** 0.5:.3f} | | |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
