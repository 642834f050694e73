"""Interop round trips (issue 14), measured: how closely each wrapper reproduces the direct path.

1. A random tiny diffusers `UNet2DModel` through `EpsModelScore` against -eps / sigma computed from
   diffusers' own UNet call and alpha_bar table, at every 37th DDPM step's time t_k (float32).
2. k-diffusion samplers (Heun, DPM++ 2M, Euler) through `KDiffusionDenoiser` on the ring2d oracle's VP
   score against the same samplers on the exact EDM denoiser written directly (float64).
3. sde_gen samplers (Heun, DPM-Solver) through `DenoiserScore` around k-diffusion's own
   `DiscreteEpsDDPMDenoiser` against `EpsModelScore` on the same eps network (float64).
4. The time map: max abs(t_k - (k + 1) / N) over the 1,000 steps (continuous limit) and tau(T).

Writes a markdown table (max absolute and relative differences) to stdout and, with --out, to a file.
Usage: OMP_NUM_THREADS=1 python benchmarks/bench_interop.py --out benchmarks/results/interop.md
"""
from __future__ import annotations

import argparse
import sys

import torch

from sde_gen import EDMSDE, VPSDE, DenoiserScore, EpsModelScore, KDiffusionDenoiser, make_preset, sample
from sde_gen.interop import DDPMTimesteps, ddpm_alphas_cumprod, ddpm_vp_sde, import_k_diffusion

N = 1000


def _diff(a, b):
    err = (a - b).abs().max()
    return float(err), float(err / b.abs().max())


def unet_rows():
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    rows = []
    for schedule in ("linear", "squaredcos_cap_v2"):
        sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_schedule=schedule)
        sde = ddpm_vp_sde(**sched.config)
        score = EpsModelScore(unet, sched.alphas_cumprod, sde)
        k = torch.arange(0, N, 37)
        t = score.timesteps.times()[k].float()
        x = torch.randn(len(k), 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = -unet(x, k).sample / torch.sqrt(1 - sched.alphas_cumprod[k]).view(-1, 1, 1, 1)
            rows.append((f"UNet2DModel score vs -eps/sigma ({schedule}, {len(k)} steps, float32)", *_diff(score(x, t), ref)))
    return rows


def _edm_denoiser(oracle):
    score_edm = oracle.score_fn(EDMSDE(T=1e4, eps=1e-6))
    return lambda x, sigma: x + sigma.reshape(-1, 1).to(x.dtype) ** 2 * score_edm(x, sigma.reshape(-1).expand(x.shape[0]).to(x.dtype))


def k_diffusion_rows():
    K = import_k_diffusion("sampling")
    oracle, sde = make_preset("ring2d"), VPSDE()
    wrapped = KDiffusionDenoiser(oracle.score_fn(sde), sde)
    sigmas = K.get_sigmas_karras(20, wrapped.sigma_min, wrapped.sigma_max, rho=7.0, device="cpu").to(torch.float64)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    rows = []
    for name in ("sample_heun", "sample_dpmpp_2m", "sample_euler"):
        fn = getattr(K, name)
        rows.append((f"k-diffusion {name} via KDiffusionDenoiser vs direct EDM denoiser (20 steps, float64)",
                     *_diff(fn(wrapped, x_T, sigmas, disable=True), fn(_edm_denoiser(oracle), x_T, sigmas, disable=True))))
    external = import_k_diffusion("external")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)).double()

    def eps_model(x, tau):
        return net(torch.cat([x, tau[:, None].to(x.dtype) / N], 1))

    abar, sde = ddpm_alphas_cumprod(N), ddpm_vp_sde(N)
    k_wrapped = external.DiscreteEpsDDPMDenoiser(eps_model, abar, quantize=False)
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        for sampler in ("heun", "dpm_solver"):
            through = sample(sde, DenoiserScore(k_wrapped, sde), x_T=x, sampler=sampler, nfe=20).samples
            direct = sample(sde, EpsModelScore(eps_model, abar, sde), x_T=x, sampler=sampler, nfe=20).samples
            rows.append((f"sde_gen {sampler} via DenoiserScore(DiscreteEpsDDPMDenoiser) vs EpsModelScore (NFE 20, float64)",
                         *_diff(through, direct)))
    return rows


def time_map_rows():
    rows = []
    for schedule in ("linear", "squaredcos_cap_v2"):
        sde = ddpm_vp_sde(N, beta_schedule=schedule)
        steps = DDPMTimesteps(ddpm_alphas_cumprod(N, beta_schedule=schedule), sde)
        tk = steps.times()
        dev = float((tk - torch.arange(1, N + 1, dtype=torch.float64) / N).abs().max())
        tau_T = float(steps(torch.tensor([sde.T], dtype=torch.float64))[0])
        rows.append((f"time map ({schedule}): max abs(t_k - (k+1)/N)", dev, tau_T))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = unet_rows() + k_diffusion_rows()
    lines = ["| check | max abs difference | relative to max abs reference |", "|---|---|---|"]
    lines += [f"| {name} | {a:.3g} | {r:.3g} |" for name, a, r in rows]
    lines += ["", "| time map | value | |", "|---|---|---|"]
    lines += [f"| {name} | {a:.4g} | tau(T) = {b:.2f} |" for name, a, b in time_map_rows()]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        cmd = "OMP_NUM_THREADS=1 python benchmarks/bench_interop.py --out " + args.out
        with open(args.out, "w") as fh:
            fh.write(f"# Interop round trips\n\nCommand: `{cmd}` (CPU, torch {torch.__version__}).\n\n{text}")


if __name__ == "__main__":
    main()
