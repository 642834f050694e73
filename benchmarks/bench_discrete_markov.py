"""The discrete ELBO and the ancestral sampler against an exact likelihood (issue 16, item 6's token-sequence set):
Markov-chain sequences (`sde_gen.discrete.MarkovTokens`, K = 4 states, L = 16 positions) with the exact
denoiser p(x_0^l | x_t) of the forward-backward recursions, so the only error left is the model family's:
D3PM's reverse kernel draws the positions of x_{t-1} independently given x_t.

    OMP_NUM_THREADS=1 python benchmarks/bench_discrete_markov.py [--n 1000] [--out benchmarks/results/discrete_markov.md]

-ELBO    `nelbo` with the exact denoiser on n test sequences (one x_t draw per term), bits/dim, and its paired
         gap to the exact NLL of the same sequences (mean +- standard error); the gap is >= 0 in expectation
         and shrinks as T grows (fewer positions change per step).
samples  n sequences from `d3pm_ancestral` at NFE = T with the exact denoiser: their mean exact NLL next to
         the entropy (bits/dim; equal for exact samples up to the standard error), and the mean per-position
         marginal TV to the exact marginals next to that of n exact draws (the noise floor).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

import sde_gen.discrete as dd
from sde_gen.io import atomic_write_text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--Ts", default="4,16,64,256")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = dd.MarkovTokens(num_levels=4, length=16, num_train=args.n, num_test=args.n, seed=0)
    L, n = data.length, args.n
    x0 = data.test
    exact = -data.log_prob(x0) / (L * math.log(2))
    H = data.entropy() / (L * math.log(2))
    marg = data.position_marginals()
    tv = lambda x: float(0.5 * (torch.nn.functional.one_hot(x, 4).double().mean(0) - marg).abs().sum(1).mean())  # noqa: E731
    floor = tv(data.train)
    cmd = f"OMP_NUM_THREADS=1 python benchmarks/bench_discrete_markov.py --n {n} --Ts {args.Ts}"
    lines = ["# Discrete ELBO and ancestral sampling against an exact Markov-chain likelihood", "",
             f"Command: `{cmd}` (torch {torch.__version__}, CPU). Data: `MarkovTokens(num_levels=4, length=16, seed=0)`; "
             f"entropy {H:.4f} bits/dim; exact NLL of the {n} test sequences {float(exact.mean()):.4f} bits/dim; "
             f"marginal TV of {n} exact draws (floor) {floor:.4f}.", "",
             "| process | T | -ELBO bits/dim | gap to exact NLL (bits/dim) | sample NLL bits/dim (entropy " f"{H:.4f}) | marginal TV | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in ("absorbing", "uniform"):
        for T in [int(v) for v in args.Ts.split(",")]:
            process = dd.build_process(name, 4, num_timesteps=T)
            model = data.denoiser(process)
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(T)
            bpd = dd.nelbo(process, model, x0, g).bits_per_dim
            gap = bpd - exact
            x = dd.sample_discrete(process, model, (n, L), sampler="d3pm_ancestral", nfe=T, generator=g).samples
            nll = -data.log_prob(x) / (L * math.log(2))
            se = lambda v: float(v.std()) / math.sqrt(v.numel())  # noqa: E731
            lines.append(f"| {name} | {T} | {float(bpd.mean()):.4f} | {float(gap.mean()):.4f} +- {se(gap):.4f} | "
                         f"{float(nll.mean()):.4f} +- {se(nll):.4f} | {tv(x):.4f} | {time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
