"""Time grids for reverse-time solvers, independent of the solver (as in Karras et al. 2022).

Each grid runs from t_max (usually T) down to t_min (usually eps) in N steps and is returned
in float64 on the requested device, shape (N + 1,). In terms of the SDE's half log-SNR
lambda(t) = log(a(t) / s(t)) and the equivalent noise level sigma(t) = s(t) / a(t) = exp(-lambda):

    "uniform"  equal steps in t (Song et al. 2021)
    "log_snr"  equal steps in lambda (Lu et al. 2022, DPM-Solver, Sec. 3.3)
    "karras"   sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
               (Karras et al. 2022, eq. 5): short steps at low noise, where the ODE curves most.

Because every SDE exposes lambda(t) and its inverse, each grid works for every SDE.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..sdes import SDE

GRIDS = ("uniform", "log_snr", "karras")


def time_grid(
    sde: SDE,
    num_steps: int,
    kind: str = "uniform",
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    rho: float = 7.0,
    device=None,
) -> torch.Tensor:
    """Decreasing float64 times t_0 = t_max > t_1 > ... > t_N = t_min, shape (num_steps + 1,).

    Args:
        sde: the forward SDE (its `half_log_snr` and inverse place the non-uniform grids).
        num_steps: N >= 1.
        kind: "uniform", "log_snr" or "karras".
        t_max, t_min: end points; default `sde.T` and `sde.eps`.
        rho: the Karras exponent (only for "karras").
        device: where the grid lives (compute it once there, before the loop).
    """
    check_choice("grid", kind, GRIDS)
    num_steps = check_positive_int("num_steps", num_steps)
    rho = check_positive("rho", rho)
    t_max = sde.T if t_max is None else float(t_max)
    t_min = sde.check_t_min(None if t_min is None else float(t_min))
    if not t_min < t_max <= sde.T:
        raise ValueError(f"t_min and t_max must satisfy 0 < t_min < t_max <= T={sde.T}; got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64, device=device)
    if kind == "uniform":
        ts = t_max + (t_min - t_max) * u
    else:
        ends = torch.tensor([t_max, t_min], dtype=torch.float64, device=device)
        lam_max_t, lam_min_t = sde.half_log_snr(ends).unbind()
        if kind == "log_snr":
            lam = lam_max_t + (lam_min_t - lam_max_t) * u
        else:
            inv = 1.0 / rho
            s_hi, s_lo = torch.exp(-lam_max_t) ** inv, torch.exp(-lam_min_t) ** inv
            lam = -rho * torch.log(s_hi + (s_lo - s_hi) * u)
        ts = sde.time_at_half_log_snr(lam)
    # pin the end points exactly (the inverse is accurate to ~1e-12, not to the last bit)
    ts[0], ts[-1] = t_max, t_min
    return ts
