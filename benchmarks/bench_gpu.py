"""The GPU benchmark of issue 13: one command, one table, `benchmarks/results/gpu.md`.

    python benchmarks/bench_gpu.py                  # on a CUDA machine (the figures of the issue)
    python benchmarks/bench_gpu.py --smoke          # toy sizes on the CPU, seconds (a code-path check)

Sections, all in one process on one device (ratios against a baseline measured in the same run):

1. Training throughput (images/s) of the CIFAR-10 U-Net (`model=ddpmpp`, 62M parameters, 32x32x3,
   batch 128, VP SDE, DSM loss, Adam, gradient clipping, EMA: the step of `sde_gen.training`) in
   fp32 eager, bf16 autocast, bf16 + channels-last, bf16 + torch.compile; peak memory per mode.
   Target: bf16 + compile >= 1.8x fp32 eager.
2. Sampling throughput and sampler overhead with the same U-Net (EMA-free, eval mode, bf16 autocast)
   at NFE 10, 35, 100: `overhead` = the wall time of the same sampler run with a score function that
   costs nothing (returns a pre-computed tensor) / the wall time with the network, i.e. the share of
   the time spent outside the network. Target: < 3 % at NFE 35.
3. Likelihood: `sde_gen.likelihood.log_likelihood` (probability-flow ODE, torchdiffeq dopri5 on the
   device, Hutchinson trace with one Rademacher probe) against score_sde's structure (scipy RK45
   with a numpy round trip at every evaluation, `bench_likelihood.scipy_log_likelihood`), same
   tolerances, same probe, on the 64-D Gaussian-mixture oracle (exact score; the error is against
   the closed-form log p_eps). Target: >= 5x faster at equal accuracy.

Times are medians over `--repeats` runs after warm-up, with `torch.cuda.synchronize()` around each
on CUDA. `--smoke` shrinks every size (a 8x8 U-Net of width 8, batch 4, 2 timed steps, compile with
the "eager" dynamo backend) so the whole script runs on a CPU in seconds; its figures are not GPU
figures and the results file says so.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from sde_gen import VPSDE, make_preset  # noqa: E402
from sde_gen.io import atomic_write_text  # noqa: E402
from sde_gen.likelihood import draw_probes, log_likelihood  # noqa: E402
from sde_gen.losses import DenoisingScoreMatching  # noqa: E402
from sde_gen.nets import DDPMpp, ScoreModel  # noqa: E402
from sde_gen.samplers import SAMPLERS  # noqa: E402

REFERENCE = dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=4, attention_resolutions=(16,), dropout=0.1)
SMOKE = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.1)
SAMPLER_NAMES = ("euler_maruyama", "dpm_solver", "heun")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` runs (after the caller's warm-up)."""
    out = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")


def _network(args, device, channels_last=False) -> ScoreModel:
    torch.manual_seed(0)
    sizes = SMOKE if args.smoke else REFERENCE
    net = DDPMpp(in_channels=3, image_size=args.image_size, channels_last=channels_last, **sizes)
    return ScoreModel(net, VPSDE(), data_std=0.5).to(device)


# ---------------------------------------------------------------- 1. training throughput
def training_rows(args, device) -> List[Dict]:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    modes = [("fp32 eager", None, False, False), ("bf16 autocast", torch.bfloat16, False, False),
             ("bf16 + channels-last", torch.bfloat16, True, False), ("bf16 + compile", torch.bfloat16, False, True)]
    g = torch.Generator(device).manual_seed(0)
    data = torch.rand(args.batch * 4, 3, args.image_size, args.image_size, generator=g, device=device) * 2 - 1
    rows = []
    for label, dtype, channels_last, compiled in modes:
        model = _network(args, device, channels_last)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        loss_fn, sde = DenoisingScoreMatching(), model.sde
        net = torch.compile(model, backend=args.compile_backend) if compiled else model
        params = list(model.parameters())

        def step():
            idx = torch.randint(0, data.shape[0], (args.batch,), generator=g, device=device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(net, sde, data[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update_parameters(model)

        start = time.perf_counter()
        for _ in range(args.warmup):  # includes compilation for the compiled mode
            step()
        _sync(device)
        warm_s = time.perf_counter() - start
        _peak_reset(device)
        sec = _timed(lambda: [step() for _ in range(args.steps)], device, args.repeats)
        rows.append(dict(mode=label, images_per_s=args.batch * args.steps / sec, step_ms=1e3 * sec / args.steps,
                         warmup_s=warm_s, peak_gib=_peak_gib(device)))
        del model, ema, opt, net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
    return rows


# ---------------------------------------------------------------- 2. sampling throughput and overhead
def sampling_rows(args, device) -> List[Dict]:
    model = _network(args, device).eval()
    sde = model.sde
    shape = (args.sample_batch, 3, args.image_size, args.image_size)

    def network_score(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(x, t).to(x.dtype)

    g = torch.Generator(device).manual_seed(1)
    fixed = torch.randn(shape, generator=g, device=device)

    def free_score(x, t):  # costs nothing: the sampler's own work is all that is left
        return fixed

    rows = []
    with torch.no_grad():
        x_T = torch.randn(shape, generator=g, device=device)
        network_score(x_T, torch.full((shape[0],), 0.5, device=device))  # warm-up
        _peak_reset(device)
        one_eval = _timed(lambda: network_score(x_T, torch.full((shape[0],), 0.5, device=device)), device, args.repeats)
        for name in SAMPLER_NAMES:
            for nfe in args.nfes:
                sampler = SAMPLERS[name](nfe=nfe)

                def run(score):
                    return sampler(sde, score, x_T=x_T, generator=torch.Generator(device).manual_seed(2))
                res = run(network_score)  # warm-up, and the NFE actually spent
                run(free_score)
                full = _timed(lambda: run(network_score), device, args.repeats)
                bare = _timed(lambda: run(free_score), device, args.repeats)
                rows.append(dict(sampler=name, nfe=res.nfe, seconds=full, images_per_s=shape[0] / full,
                                 overhead_pct=100 * bare / full,
                                 overhead_vs_eval_pct=100 * max(full - res.nfe * one_eval, 0.0) / full))
    peak = _peak_gib(device)
    for r in rows:
        r["peak_gib"] = peak
    return rows


# ---------------------------------------------------------------- 3. likelihood vs the scipy round trip
def likelihood_rows(args, device) -> List[Dict]:
    from bench_likelihood import scipy_log_likelihood

    oracle = make_preset("mixture64d")  # drawn from, and p_T built, on the CPU; then moved
    x = oracle.sample(args.likelihood_n, torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    p_T = oracle.perturbed(VPSDE(), 1.0).to(device)
    oracle = oracle.to(device)
    sde = VPSDE().to(device)
    score = oracle.score_fn(sde)
    exact = oracle.log_prob(x, torch.full((x.shape[0],), sde.eps, dtype=torch.float64, device=device), sde)
    probe = draw_probes(x, 1, "rademacher", torch.Generator(device).manual_seed(4))
    D, tol = x.shape[1], args.tol

    def ours(xs):
        res = log_likelihood(sde, score, xs, rtol=tol, atol=tol, divergence="hutchinson", prior_logp=p_T.log_prob,
                             generator=torch.Generator(device).manual_seed(4))
        return res.logp, res.nfe

    def scipy_rt(xs):
        return scipy_log_likelihood(sde, score, xs, p_T.log_prob, tol, tol, probe=probe[0][: xs.shape[0]])

    ours(x[:2])
    scipy_rt(x[:2])  # warm-up
    rows = []
    for label, fn in (("ours: torchdiffeq dopri5 on the device", ours), ("scipy RK45 + numpy round trip (score_sde)", scipy_rt)):
        _peak_reset(device)
        _sync(device)
        start = time.perf_counter()
        logp, nfe = fn(x)
        _sync(device)
        sec = time.perf_counter() - start
        err = (logp - exact).abs() / D
        rows.append(dict(method=label, seconds=sec, nfe=nfe, mean_err=float(err.mean()), max_err=float(err.max()),
                         peak_gib=_peak_gib(device)))
    for r in rows:
        r["speedup"] = rows[1]["seconds"] / r["seconds"]
    return rows


# ---------------------------------------------------------------- the report
def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report(args, device, train, samp, lik, command: str) -> str:
    lines = ["# GPU benchmark (issue 13)", ""]
    if device.type != "cuda":
        lines += ["**Not GPU figures.** This file was written by a run on the CPU"
                  + (" at the toy `--smoke` sizes" if args.smoke else "") + "; it checks that every code path "
                  "runs, and its numbers say nothing about GPU throughput.", ""]
    lines += [f"Command: `{command}`", "",
              f"Device: {_device_name(device)}; torch {torch.__version__}; sizes: "
              f"{'smoke (8x8 U-Net of width 8)' if args.smoke else 'CIFAR-10 DDPM++ (62M parameters, 32x32x3)'}.", "",
              f"## Training throughput (batch {args.batch}, {args.steps} steps, median of {args.repeats})", "",
              "| mode | images/s | ms/step | vs fp32 eager | warm-up s (incl. compile) | peak GiB |", "|---|---|---|---|---|---|"]
    for r in train:
        lines.append(f"| {r['mode']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['warmup_s']:.1f} | {r['peak_gib']:.2f} |")
    comp = next(r for r in train if r["mode"] == "bf16 + compile")
    lines += ["", f"Target bf16 + compile >= 1.8x fp32 eager: {comp['speedup']:.2f}x "
              f"({'met' if comp['speedup'] >= 1.8 else 'not met'}).", "",
              f"## Sampling (batch {args.sample_batch}, the U-Net under bf16 autocast, median of {args.repeats})", "",
              "| sampler | NFE | wall s | images/s | overhead (free-score run / full run) | overhead (full - NFE x one eval) |",
              "|---|---|---|---|---|---|"]
    for r in samp:
        lines.append(f"| {r['sampler']} | {r['nfe']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} | "
                     f"{r['overhead_pct']:.2f} % | {r['overhead_vs_eval_pct']:.2f} % |")
    at35 = [r["overhead_pct"] for r in samp if r["nfe"] in (34, 35)]
    if at35:
        lines += ["", f"Target sampler overhead < 3 % at NFE 35: worst {max(at35):.2f} % "
                  f"({'met' if max(at35) < 3 else 'not met'})."]
    lines += ["", f"Peak memory while sampling: {samp[0]['peak_gib']:.2f} GiB.", "",
              f"## Likelihood (mixture64d oracle, N={args.likelihood_n}, D=64, Hutchinson with one Rademacher probe, "
              f"rtol = atol = {args.tol:g}, float64)", "",
              "| method | wall s | speed-up vs scipy | NFE | mean err (nats/dim) | max err (nats/dim) | peak GiB |",
              "|---|---|---|---|---|---|---|"]
    for r in lik:
        lines.append(f"| {r['method']} | {r['seconds']:.3f} | {r['speedup']:.1f}x | {r['nfe']} | {r['mean_err']:.2e} | "
                     f"{r['max_err']:.2e} | {r['peak_gib']:.2f} |")
    lines += ["", f"Target likelihood >= 5x faster than the scipy round trip at equal accuracy: {lik[0]['speedup']:.1f}x "
              f"({'met' if lik[0]['speedup'] >= 5 else 'not met'}; compare the error columns for 'equal accuracy').", ""]
    return "\n".join(lines)


def main(argv=None) -> Dict[str, List[Dict]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (seconds): checks the code paths")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/gpu.md; none with --smoke)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed training steps per repeat")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation happens here)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--sample-batch", type=int, default=None)
    p.add_argument("--nfes", default="10,35,100")
    p.add_argument("--likelihood-n", type=int, default=None)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--compile-backend", default=None, help="default inductor (eager with --smoke)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(batch=4 if smoke else 128, steps=2 if smoke else 20, warmup=1 if smoke else 5, repeats=1 if smoke else 3,
                    sample_batch=2 if smoke else 128, likelihood_n=4 if smoke else 1024,
                    compile_backend="eager" if smoke else "inductor")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.nfes = [int(v) for v in args.nfes.split(",")]
    if smoke and args.nfes == [10, 35, 100]:
        args.nfes = [3, 5]
    args.image_size = 8 if smoke else 32
    device = torch.device(args.device or ("cpu" if smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here; use --smoke (CPU, toy sizes) to check the code paths")
    out = args.out if args.out is not None else (None if smoke else os.path.join(os.path.dirname(__file__), "results", "gpu.md"))
    command = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train = training_rows(args, device)
    samp = sampling_rows(args, device)
    lik = likelihood_rows(args, device)
    text = report(args, device, train, samp, lik, command.strip())
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_text(out, text)
    return {"training": train, "sampling": samp, "likelihood": lik, "report": text}


if __name__ == "__main__":
    main()
