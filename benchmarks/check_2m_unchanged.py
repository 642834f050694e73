"""DPM-Solver++(2M) before and after the move onto the exponential-integrator core (issue 17).

    cd <checkout A> && PYTHONPATH=. python <this file> save /tmp/a.pt
    cd <checkout B> && PYTHONPATH=. python <this file> save /tmp/b.pt
    python <this file> compare /tmp/a.pt /tmp/b.pt

Saves `dpm_solver` samples on gaussian16d (256 points, exact score) for VP, sub-VP and VE, float32
and float64, NFE 3, 5, 10, 20, 50, grids log_snr and karras; `compare` prints the largest
|a - b| / max |a| per dtype.
"""
import collections
import sys

import torch

from sde_gen import SDES, make_preset
from sde_gen.samplers import build_sampler


def save(path):
    g = make_preset("gaussian16d")
    out = {}
    for name in ("vp", "subvp", "ve"):
        sde = SDES[name]()
        for dt in (torch.float32, torch.float64):
            x = sde.prior_sample((256, 16), torch.Generator().manual_seed(0), dtype=dt)
            for nfe in (3, 5, 10, 20, 50):
                for grid in ("log_snr", "karras"):
                    out[(name, str(dt), nfe, grid)] = build_sampler("dpm_solver", nfe=nfe, grid=grid)(sde, g.score_fn(sde), x_T=x).samples
    torch.save(out, path)


def compare(pa, pb):
    a, b = torch.load(pa), torch.load(pb)
    worst = collections.defaultdict(lambda: (0.0, None))
    for k in a:
        d = float((a[k] - b[k]).abs().max() / a[k].abs().max())
        if d >= worst[k[1]][0]:
            worst[k[1]] = (d, k)
    for dt, (d, k) in worst.items():
        print(f"{dt}: largest relative difference {d:.3g} at {k}")


if __name__ == "__main__":
    save(sys.argv[2]) if sys.argv[1] == "save" else compare(sys.argv[2], sys.argv[3])
