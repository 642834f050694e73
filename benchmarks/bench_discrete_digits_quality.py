"""Why discrete-diffusion digits do not look like digits (issue 16, item 3): train through the training app's
own loop (`sde_gen.training.train`, EMA and the cosine schedule of `experiment=d3pm_digits_absorbing`) at a
few settings, then measure the test -ELBO and the samples of several samplers with a digit classifier.

    OMP_NUM_THREADS=1 python benchmarks/bench_discrete_digits_quality.py --steps 1000 --lambdas 0.01,1.0 \
        [--width 64 --depth 2 --T 64 --ema 0.99] [--out benchmarks/results/discrete_digits_quality.md]

digit-likeness  `nn dist`: the mean Euclidean distance (in levels, 64 pixels) from each sample to its nearest
                training image. For the held-out test images it is the target (real digits, never seen);
                for independent per-pixel draws from the fitted marginals the reference of "pixels right,
                no shape". (A classifier's confidence was tried first and rejected: a logistic regression
                is as confident on those independent draws as on many real digits.)
samplers        d3pm_ancestral (NFE 64; the exact reverse chain of the model), MaskGIT in confidence order
                (NFE 16), in MaskGIT's noisy-confidence order (choice_temperature 4.5, NFE 16) and in random
                order (choice_temperature 1e6, NFE 64, temperature 1 and 0.7).
-ELBO           of the whole test split with the EMA weights (`nelbo`, all T terms).
One seed per setting on a shared 2-core CPU: the figures are what this budget buys.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import sde_gen.discrete as dd
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.discrete.evaluation import plot_token_grid
from sde_gen.io import atomic_write_text
from sde_gen.training import train

SAMPLERS = [("d3pm_ancestral", 64, {}), ("maskgit", 16, {}), ("maskgit", 16, {"choice_temperature": 4.5}),
            ("maskgit", 64, {"choice_temperature": 1e6}), ("maskgit", 64, {"choice_temperature": 1e6, "temperature": 0.7})]


def nn_dist(train: torch.Tensor, x: torch.Tensor) -> float:
    """Mean over the rows of x of the Euclidean distance to the nearest training image (levels)."""
    d = torch.cdist(x.reshape(x.shape[0], -1).double(), train.reshape(train.shape[0], -1).double())
    return float(d.min(1).values.mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lambdas", default="0.01,1.0")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--ema", type=float, default=0.99, help="train.ema_decay (the experiment's 0.999 averages over "
                    "~1000 steps: longer than a short run, whose EMA weights then stay near the initial ones)")
    ap.add_argument("--n", type=int, default=256, help="samples per sampler")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = dd.DigitsTokens()
    g = torch.Generator().manual_seed(0)
    K, n = data.num_levels, args.n
    counts = torch.nn.functional.one_hot(data.train.reshape(data.train.shape[0], -1), K).sum(0).double()
    indep = torch.multinomial((counts + 0.5) / (counts + 0.5).sum(1, keepdim=True), n, replacement=True, generator=g).T
    cmd = (f"OMP_NUM_THREADS=1 python benchmarks/bench_discrete_digits_quality.py --steps {args.steps} --lambdas {args.lambdas} "
           f"--width {args.width} --depth {args.depth} --T {args.T} --n {n} --ema {args.ema:g}")
    tc, tf = nn_dist(data.train, data.test), nn_dist(data.train, indep.reshape(n, 1, 8, 8))
    lines = ["# Why the discrete digits do not look like digits", "", f"Command: `{cmd}` (torch {torch.__version__}, CPU, "
             f"{torch.get_num_threads()} thread).", "",
             f"Nearest-training-image distance (levels): real test digits {tc:.2f}; independent per-pixel draws {tf:.2f}; "
             f"independent categorical test NLL {data.independent_bits_per_dim():.4f} bits/dim.", "",
             "| lambda_ce | steps | train time (s) | test -ELBO bits/dim | sampler | NFE | options | nn dist | marginal TV |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    grids = []
    for lam in [float(v) for v in args.lambdas.split(",")]:
        register_configs()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose("config", overrides=[
                "experiment=d3pm_digits_absorbing", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                f"train.checkpoint_every={args.steps}", "train.eval_samples=64", "train.plots=false", "train.progress=false",
                f"loss.lambda_ce={lam}", f"model.width={args.width}", f"model.depth={args.depth}", f"sde.num_timesteps={args.T}",
                "sampler.nfe=8", f"train.ema_decay={args.ema}", "device=cpu"])
        GlobalHydra.instance().clear()
        with tempfile.TemporaryDirectory() as run_dir:
            out = train(cfg, run_dir)
        model = out["ema"].module.eval()
        process = dd.AbsorbingProcess(17, num_timesteps=args.T).eval()
        with torch.no_grad():
            bpd = dd.nelbo(process, model, data.test, torch.Generator().manual_seed(1)).bits_per_dim
        elbo = f"{float(bpd.mean()):.4f} +- {float(bpd.std()) / math.sqrt(bpd.numel()):.4f}"
        for name, nfe, opts in SAMPLERS:
            nfe = min(nfe, args.T) if name == "d3pm_ancestral" else nfe
            t0 = time.perf_counter()
            x = dd.sample_discrete(process, model, (n, 1, 8, 8), sampler=name, nfe=nfe,
                                   generator=torch.Generator().manual_seed(2), **opts).samples
            dist = nn_dist(data.train, x)
            tv = dd.evaluation.marginal_tv_to(x, data.test, K)
            row = (f"| {lam:g} | {args.steps} | {out['wall_s']:.0f} | {elbo} | {name} | {nfe} | "
                   f"{', '.join(f'{k}={v:g}' for k, v in opts.items()) or '-'} | {dist:.2f} | {tv:.3f} |")
            lines.append(row)
            print(row, f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if name == "d3pm_ancestral" or opts.get("temperature") == 0.7:
                grids.append((f"lambda {lam:g}, {name} NFE {nfe} {opts.get('temperature', '')}", x))
        if args.out:
            atomic_write_text(args.out, "\n".join(lines) + "\n")
    if args.out:
        base = os.path.splitext(args.out)[0]
        for i, (title, x) in enumerate(grids):
            plot_token_grid(x, K, f"{base}_{i}.png", title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
