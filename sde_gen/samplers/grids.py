"""Time grids for reverse-time solvers, independent of the solver (as in Karras et al. 2022).

Each grid runs from t_max (usually T) down to t_min (usually eps) in N steps and is returned
in float64 on the requested device, shape (N + 1,). In terms of the SDE's half log-SNR
lambda(t) = log(a(t) / s(t)) and the equivalent noise level sigma(t) = s(t) / a(t) = exp(-lambda):

    "uniform"  equal steps in t (Song et al. 2021)
    "log_snr"  equal steps in lambda (Lu et al. 2022, DPM-Solver, Sec. 3.3)
    "karras"   sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7
               (Karras et al. 2022, eq. 5): short steps at low noise, where the ODE curves most.
    "optimized" a grid computed offline for one SDE, solver and step count by `optimize_grid`
               (minimising the terminal error of the solver against a fine reference solve over
               trajectories of a score function, in the spirit of Sabour et al. 2024, "Align Your
               Steps", and of the local-error-driven grids of DPM-Solver-v3), stored with the inputs
               that produced it in the versioned package table `optimized_grids.json`.

Because every SDE exposes lambda(t) and its inverse, each formula grid works for every SDE.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..sdes import SDE

GRIDS = ("uniform", "log_snr", "karras", "optimized")
#: the package table of optimised grids (see `optimize_grid`, `stored_grid`)
OPTIMIZED_GRIDS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optimized_grids.json")
OPTIMIZED_GRIDS_VERSION = 1


def time_grid(
    sde: SDE,
    num_steps: int,
    kind: str = "uniform",
    t_max: Optional[float] = None,
    t_min: Optional[float] = None,
    rho: float = 7.0,
    device=None,
    sampler=None,
) -> torch.Tensor:
    """Decreasing float64 times t_0 = t_max > t_1 > ... > t_N = t_min, shape (num_steps + 1,).

    Args:
        sde: the forward SDE (its `half_log_snr` and inverse place the non-uniform grids).
        num_steps: N >= 1.
        kind: "uniform", "log_snr", "karras" or "optimized".
        t_max, t_min: end points; default `sde.T` and `sde.eps`.
        rho: the Karras exponent (only for "karras").
        device: where the grid lives (compute it once there, before the loop).
        sampler: for "optimized", the sampler whose stored grid is looked up (`stored_grid`).
    """
    check_choice("grid", kind, GRIDS)
    num_steps = check_positive_int("num_steps", num_steps)
    rho = check_positive("rho", rho)
    t_max = sde.T if t_max is None else float(t_max)
    t_min = sde.check_t_min(None if t_min is None else float(t_min))
    if not t_min < t_max <= sde.T:
        raise ValueError(f"t_min and t_max must satisfy 0 < t_min < t_max <= T={sde.T}; got t_min={t_min}, t_max={t_max}")
    if kind == "optimized":
        if t_max != sde.T:
            raise ValueError(f"grid='optimized' runs from T={sde.T}; got t_max={t_max}")
        return torch.tensor(stored_grid(sde, sampler, num_steps, t_min)["times"], dtype=torch.float64, device=device)
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


# ---- optimised grids ----
def _sampler_key(sampler) -> Dict[str, Any]:
    """The facts of a sampler a stored grid is tied to: its name and its own options."""
    from .base import Sampler  # the base class imports this module

    own = {}
    for f in sampler.__dataclass_fields__.values():
        if f.name in Sampler.__dataclass_fields__ or f.name == "_":
            continue
        own[f.name] = getattr(sampler, f.name)
    return {"sampler": sampler.name, "options": own}


def load_grid_table(path: Optional[str] = None) -> Dict[str, Any]:
    """The table of optimised grids (`OPTIMIZED_GRIDS_PATH` by default): {"version", "entries"}."""
    with open(path or OPTIMIZED_GRIDS_PATH) as fh:
        table = json.load(fh)
    if table.get("version") != OPTIMIZED_GRIDS_VERSION:
        raise ValueError(f"optimized grid table version must be {OPTIMIZED_GRIDS_VERSION}; got {table.get('version')!r}")
    return table


def stored_grid(sde: SDE, sampler, num_steps: int, t_min: Optional[float] = None, path: Optional[str] = None) -> Dict[str, Any]:
    """The stored entry for (SDE, sampler and its options, denoise, num_steps, t_min), or a ValueError that
    lists what is stored. The entry holds "times" (num_steps + 1 floats) and the inputs it was tuned on."""
    t_min = sde.check_t_min(t_min)
    if sampler is None:
        raise ValueError("grid='optimized' needs the sampler whose grid to look up (sampler=None)")
    key = _sampler_key(sampler)
    entries = load_grid_table(path)["entries"]
    for e in entries:
        if (e["sde"] == repr(sde) and e["sampler"] == key["sampler"] and e["options"] == key["options"]
                and e["denoise"] == sampler.denoise and e["num_steps"] == num_steps
                and math.isclose(e["t_min"], t_min, rel_tol=1e-12)):
            return e
    have = sorted({f"{e['sampler']} {e['options']} denoise={e['denoise']} on {e['sde']}: num_steps {e['num_steps']}" for e in entries})
    raise ValueError(
        f"grid='optimized' has no stored grid for sampler {key['sampler']!r} with options {key['options']}, "
        f"denoise={sampler.denoise} on {sde!r} "
        f"with num_steps={num_steps}, t_min={t_min}; stored: {have} (compute one with optimize_grid)"
    )


#: every optimised lambda-step is at least this fraction of the mean step (strictly decreasing grids)
MIN_STEP_FRACTION = 0.05


def _lambda_grid(theta, lam_T, lam_min):
    """Strictly monotone by construction: increments MIN_STEP_FRACTION / N + (1 - MIN_STEP_FRACTION)
    softmax([0, theta]) of the lambda span."""
    z = torch.cat([torch.zeros(1, dtype=torch.float64), torch.as_tensor(theta, dtype=torch.float64)])
    inc = MIN_STEP_FRACTION / z.numel() + (1 - MIN_STEP_FRACTION) * torch.softmax(z, 0)
    frac = torch.cumsum(inc, 0)
    return torch.cat([lam_T.reshape(1), lam_T + (lam_min - lam_T) * frac])


def _grid_from_theta(sde: SDE, theta, t_min: float) -> torch.Tensor:
    ends = torch.tensor([sde.T, t_min], dtype=torch.float64)
    lam_T, lam_min = sde.half_log_snr(ends).unbind()
    ts = sde.time_at_half_log_snr(_lambda_grid(theta, lam_T, lam_min))
    ts[0], ts[-1] = sde.T, t_min  # pinned exactly, as in `time_grid`
    return ts


def run_on_grid(sampler, sde: SDE, score_fn: Callable, x_T: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The sampler's output from x_T along the float64 grid `ts` (with its denoising step)."""
    from ..parameterization import x0_from_score
    from .base import CountingScore

    score = CountingScore(score_fn)
    with torch.no_grad():
        x, _ = sampler.solve(sde, score, x_T, ts.to(x_T.device), None, None)
        if sampler.denoise:
            t_last = ts[-1].to(x_T.device).expand(x.shape[0])
            x = x0_from_score(sde, x, t_last, score(x, t_last))
    return x


def optimize_grid(
    sde: SDE,
    sampler,
    score_fn,
    x_T,
    reference_steps: int = 400,
    max_evals: int = 400,
    t_min: Optional[float] = None,
    tuned_on: str = "",
) -> Dict[str, Any]:
    """A time grid for `sampler` (its step count and options) that minimises its terminal error.

    The error estimate is the mean squared distance, over the trajectories from the rows of `x_T`,
    between the sampler's output on the grid and a fine reference solve of the same probability-flow
    ODE (DPM-Solver++(3M) with `reference_steps` log-SNR steps, with the sampler's own denoising
    step). With several problems (lists of score functions and starting batches) the objective is
    the mean over problems of log(MSE / MSE on the log-SNR grid), so each problem counts the same
    whatever its scale. The interior points are parameterised monotonically: the lambda increments
    are MIN_STEP_FRACTION / N + (1 - MIN_STEP_FRACTION) softmax([0, theta]) of the span
    lambda(T) -> lambda(t_min), theta in R^{N-1}, starting from the log-SNR grid (theta = 0);
    scipy's Nelder-Mead, deterministic.

    Args:
        sde: the forward SDE. sampler: a deterministic `GridSampler` (e.g. `build_sampler("unipc", nfe=5)`).
        score_fn: `score_fn(x, t)`: an oracle's exact score, or a trained model; or a list of them.
        x_T: (B, *event) starting points at T (e.g. `sde.prior_sample`), float64 recommended; or a
            list, one batch per score function.
        reference_steps: steps of the reference solve. max_evals: objective evaluations allowed.
        t_min: last time (default `sde.eps`). tuned_on: a description of the data, stored.

    Returns:
        A table entry: "times" (N + 1 floats, T down to t_min), "theta", "sde", "sampler",
        "options", "num_steps", "t_min", "denoise", the MSE on the log-SNR grid and on the result
        (one per problem when lists were given), and the inputs.
    """
    from scipy.optimize import minimize

    from .dpm_solver import DPMSolverPlusPlus3M

    if getattr(sampler, "stochastic", True):
        raise ValueError(f"sampler must be deterministic (an ODE solver); got {sampler.name!r}")
    reference_steps = check_positive_int("reference_steps", reference_steps)
    max_evals = check_positive_int("max_evals", max_evals)
    t_min = sde.check_t_min(t_min)
    many = isinstance(score_fn, (list, tuple))
    score_fns, x_Ts = (list(score_fn), list(x_T)) if many else ([score_fn], [x_T])
    if len(score_fns) != len(x_Ts) or not score_fns:
        raise ValueError(f"score_fn and x_T must be one each or lists of equal length; got {len(score_fns)} and {len(x_Ts)}")
    N = sampler.num_steps
    ref_solver = DPMSolverPlusPlus3M(nfe=reference_steps + sampler.denoise, denoise=sampler.denoise)
    ref_grid = time_grid(sde, reference_steps, "log_snr", t_min=t_min)
    x_refs = [run_on_grid(ref_solver, sde, f, x, ref_grid) for f, x in zip(score_fns, x_Ts)]

    def mses(theta):
        ts = _grid_from_theta(sde, theta, t_min)
        return [float((run_on_grid(sampler, sde, f, x, ts) - r).double().pow(2).flatten(1).sum(1).mean())
                for f, x, r in zip(score_fns, x_Ts, x_refs)]

    theta0 = [0.0] * (N - 1)
    mse0 = mses(theta0)

    def objective(theta):
        errs = mses(theta)
        if not all(e > 0 and math.isfinite(e) for e in errs):
            return 1e3
        return sum(math.log(e / e0) for e, e0 in zip(errs, mse0)) / len(errs)

    theta = theta0
    if N > 1:
        res = minimize(objective, theta0, method="Nelder-Mead",
                       options=dict(maxfev=max_evals, xatol=1e-6, fatol=1e-8, adaptive=N > 4))
        if res.fun < 0:  # better than the log-SNR grid (objective 0 there)
            theta = [float(v) for v in res.x]
    mse1 = mses(theta)
    key = _sampler_key(sampler)
    return {
        "sde": repr(sde), "sampler": key["sampler"], "options": key["options"], "num_steps": N,
        "t_min": t_min, "denoise": sampler.denoise, "times": [float(v) for v in _grid_from_theta(sde, theta, t_min)],
        "theta": theta,
        "mse_log_snr_grid": mse0 if many else mse0[0], "mse_optimized": mse1 if many else mse1[0],
        "inputs": {"tuned_on": tuned_on, "batch_shape": [list(x.shape) for x in x_Ts] if many else list(x_Ts[0].shape),
                   "dtype": str(x_Ts[0].dtype).replace("torch.", ""), "reference_steps": reference_steps,
                   "max_evals": max_evals, "method": "Nelder-Mead on the mean log relative MSE, theta0 = 0"},
    }


def save_grid_table(entries: List[Dict[str, Any]], path: Optional[str] = None) -> None:
    """Write a table of `optimize_grid` entries (the package table by default)."""
    with open(path or OPTIMIZED_GRIDS_PATH, "w") as fh:
        json.dump({"version": OPTIMIZED_GRIDS_VERSION, "entries": entries}, fh, indent=1)
        fh.write("\n")
