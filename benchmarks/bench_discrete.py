"""Discrete-diffusion benchmark (issue 16): sample quality vs NFE for each discrete sampler against the
exact categorical oracle, sampling time, and the exact denoiser's ELBO against the exact likelihood.

    python benchmarks/bench_discrete.py [--quick] [--n 2000] [--out benchmarks/results/discrete.md]

Every sampler is run with the oracle's exact p(x_0 | x_t) (`CategoricalMixture.denoiser`), so what is
measured is the sampler's own error at a given number of model calls (NFE), not a network's:

quality  on the presets of `sde_gen.discrete.CATEGORICAL_PRESETS` (T = 256 forward steps):
         d3pm_ancestral with the uniform, absorbing and discretised-Gaussian processes, and maskgit on
         the absorbing process with confidence order (choice_temperature 0) and random order
         (choice_temperature 1e6), at NFE 1, 2, 4, ... (maskgit: at most L). Reported: the exact TV
         over all K^L states where K^L <= 1e5, else the mean pairwise TV (`pairwise_tv`); the mode-weight
         TV; each next to its noise floor (the same metric of n exact samples, mean over 5 draws).
         The preset "hidden" was not looked at while the samplers and tests were written; its rows
         are printed in their own table.
time     wall seconds of each sampling run (n samples), on this machine, with the oracle as the model.
elbo     the negative ELBO of the exact denoiser (`nelbo`, all T terms, one x_t draw per term) in bits
         per dimension next to the exact -log2 p(x) / L of the same samples, per process, with standard
         errors (the gap's from the paired per-sample differences). Its expectation is >= the entropy;
         tests/test_discrete.py checks that by enumeration on the tiny preset.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import sde_gen.discrete as dd
from sde_gen.io import atomic_write_text

T = 256
EXACT_STATES = 100_000
PRESETS = ("tiny", "small4", "seq16", "ordinal32")
ROWS = (  # (label, sampler, process, options)
    ("ancestral / uniform", "d3pm_ancestral", "uniform", {}),
    ("ancestral / absorbing", "d3pm_ancestral", "absorbing", {}),
    ("ancestral / gaussian", "d3pm_ancestral", "gaussian", {}),
    ("maskgit (confidence)", "maskgit", "absorbing", {"choice_temperature": 0.0}),
    ("maskgit (random order)", "maskgit", "absorbing", {"choice_temperature": 1e6}),
)


def main_metric(oracle):
    small = oracle.num_classes ** oracle.num_positions <= EXACT_STATES
    return ("TV", dd.total_variation) if small else ("pairwise TV", dd.pairwise_tv)


def quality_table(name, n, nfes, seed):
    oracle = dd.make_categorical_preset(name)
    K, L = oracle.num_classes, oracle.num_positions
    label, metric = main_metric(oracle)
    g = torch.Generator().manual_seed(seed)
    floor = dd.exact_noise_floor(metric, oracle, n, replicates=5, generator=g)
    floor_mode = dd.exact_noise_floor(dd.mode_weight_tv, oracle, n, replicates=5, generator=g)
    lines = [f"#### {name} (L = {L}, K = {K}, {oracle.num_components} components; n = {n})", "",
             f"noise floor: {label} {floor['mean']:.4f} (std {floor['std']:.4f}), "
             f"mode-weight TV {floor_mode['mean']:.4f} (std {floor_mode['std']:.4f})", "",
             f"| sampler | NFE | {label} | mode-weight TV | time (s) |", "|---|---|---|---|---|"]
    processes = {}
    for row, sampler, process, options in ROWS:
        p = processes.setdefault(process, dd.build_process(process, K, num_timesteps=T))
        for nfe in nfes:
            if sampler == "maskgit" and nfe > L:
                continue
            t0 = time.perf_counter()
            res = dd.sample_discrete(p, oracle.denoiser(p), (n, L), sampler=sampler, nfe=nfe,
                                     generator=torch.Generator().manual_seed(seed + nfe), **options)
            dt = time.perf_counter() - t0
            assert res.nfe == nfe
            lines.append(f"| {row} | {nfe} | {float(metric(res.samples, oracle)):.4f} | "
                         f"{float(dd.mode_weight_tv(res.samples, oracle)):.4f} | {dt:.2f} |")
    return lines


def elbo_table(names, n, seed):
    lines = ["| preset | process | -ELBO (bits/dim) +- s.e. | exact -log2 p(x) / L | gap +- s.e. of the gap | time (s) |",
             "|---|---|---|---|---|---|"]
    for name in names:
        oracle = dd.make_categorical_preset(name)
        g = torch.Generator().manual_seed(seed)
        x0 = oracle.sample(n, g)
        nll = float(-oracle.log_prob(x0).mean()) / (oracle.num_positions * math.log(2))
        for process in dd.PROCESSES:
            p = dd.build_process(process, oracle.num_classes, num_timesteps=T)
            t0 = time.perf_counter()
            res = dd.nelbo(p, oracle.denoiser(p), x0, g)
            dt = time.perf_counter() - t0
            b = float(res.bits_per_dim.mean())
            se = float(res.bits_per_dim.std()) / math.sqrt(n)
            gap = res.bits_per_dim + oracle.log_prob(x0) / (oracle.num_positions * math.log(2))  # paired
            lines.append(f"| {name} | {process} | {b:.4f} +- {se:.4f} | {nll:.4f} | {float(gap.mean()):+.4f} +- "
                         f"{float(gap.std()) / math.sqrt(n):.4f} | {dt:.1f} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 1000, NFE up to 8, ELBO on tiny only")
    ap.add_argument("--n", type=int, default=2000, help="samples per run")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n = 1000 if args.quick else args.n
    nfes = (1, 2, 4, 8) if args.quick else (1, 2, 4, 8, 16, 32, 64)
    cmd = "python benchmarks/bench_discrete.py" + (" --quick" if args.quick else f" --n {n}")
    out = ["# Discrete diffusion: samplers against the exact categorical oracle", "",
           f"Command: `OMP_NUM_THREADS=1 {cmd}` (torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s);"
           f" T = {T}; model = the oracle's exact p(x_0 | x_t); times are wall seconds on a shared machine).", "",
           "### Quality vs NFE (tuned-on presets)", ""]
    for name in PRESETS:
        out += quality_table(name, n, nfes, args.seed) + [""]
        print("\n".join(out[-20:]), file=sys.stderr)
    out += [f"### Quality vs NFE on the hidden preset ({dd.HIDDEN_PRESET!r}, not tuned on)", ""]
    out += quality_table(dd.HIDDEN_PRESET, n, nfes, args.seed) + [""]
    out += ["### ELBO of the exact denoiser (all T terms, one x_t draw per term)", ""]
    out += elbo_table(("tiny",) if args.quick else ("tiny", "seq16", dd.HIDDEN_PRESET), 200 if args.quick else 1000, args.seed)
    text = "\n".join(out) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
