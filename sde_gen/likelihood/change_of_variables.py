"""log p_{t_min}(x) through the probability-flow ODE by the instantaneous change of variables.

Probability-flow ODE (Song et al. 2021, eq. 13): dx/dt = k1 x + k2 score (`SDE.probability_flow_coeffs`).
By Chen et al. 2018 (Neural ODEs, Thm. 1; Song et al. 2021, eq. 39), with z = x(T) from x = x(t_min),

    log p_{t_min}(x) = log p_T(z) + int_{t_min}^T div f~(x(t), t) dt.

The state (x, delta_logp) is integrated by `sde_gen.ode` (shared with the `pf_ode` sampler), in t or
in u = log sigma = -lambda(t) (`time_variable`); Hutchinson probes are drawn once per solve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .._validation import check_choice, check_positive, check_positive_int
from ..ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, TIME_VARIABLES, ProbabilityFlow, integrate
from ..sdes import SDE
from ..sdes.base import ScoreFn
from .divergence import DIVERGENCES, PROBES, draw_probes, score_and_divergence


@dataclass
class LikelihoodResult:
    """What `log_likelihood` returns; every tensor is per sample, shape (B,), unless noted.

    Attributes:
        logp: log p_{t_min}(x) in nats = prior_logp + delta_logp.
        prior_logp: log p_T(z), the prior term.
        delta_logp: int_{t_min}^T div f~ dt, the divergence integral (for Hutchinson the mean
            over the probes).
        std_error: standard error of `logp` due to the Hutchinson estimator,
            std_m(I_m) / sqrt(M) over the M probe integrals (unbiased sample std); zeros for the
            exact divergence; NaN for Hutchinson with one probe (no spread to measure: use the
            spread across samples, as `evaluate_dataset` does).
        z: (B, *event) the latent x(T).
        nfe: number of drift (score) evaluations made by the solver, counted.
    """

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    std_error: torch.Tensor
    z: torch.Tensor
    nfe: int


def _mean_and_std_error(draws: torch.Tensor):
    """Mean over dim 0 of draws (M, ...) and its standard error std / sqrt(M) (unbiased std).

    The error is NaN for M = 1: one draw has no spread to measure.
    """
    mean = draws.mean(0)
    if draws.shape[0] > 1:
        return mean, draws.std(0, unbiased=True) / math.sqrt(draws.shape[0])
    return mean, torch.full_like(mean, float("nan"))


def _check_finite_rows(name: str, x: torch.Tensor, offset: int = 0) -> None:
    """Raise naming the rows of `x` (B, *event) that hold an inf or NaN (indices + `offset`)."""
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x).flatten(1).all(1)
    if bool(bad.any()):  # one host read, before any solve
        rows = (bad.nonzero().flatten() + offset).tolist()
        shown = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
        raise ValueError(f"{name} has non-finite values (inf or NaN) in {len(rows)} of {x.shape[0]} rows: "
                         f"[{shown}]; remove or fix them (rows must be finite)")


def _check_ode_options(method, rtol, atol, fixed_steps, divergence, num_probes, probe, t_min, sde, time_variable):
    if fixed_steps is not None:
        check_positive_int("fixed_steps", fixed_steps)
        method = "rk4" if method is None else method
        check_choice("method (with fixed_steps)", method, FIXED_GRID_METHODS)
    else:
        method = "dopri5" if method is None else method
        if method in FIXED_GRID_METHODS:
            raise ValueError(
                f"method={method!r} is a fixed-grid solver: give fixed_steps, or use one of {list(ADAPTIVE_METHODS)}"
            )
        check_choice("method", method, ADAPTIVE_METHODS)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    check_choice("divergence", divergence, DIVERGENCES)
    check_positive_int("num_probes", num_probes)
    check_choice("probe", probe, PROBES)
    check_choice("time_variable", time_variable, TIME_VARIABLES)
    return method, sde.check_t_min(t_min)


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    method: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    num_probes: int = 1,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    prior_logp: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    t_min: Optional[float] = None,
    fixed_steps: Optional[int] = None,
    options: Optional[Dict[str, Any]] = None,
    vjp_chunk_size: Optional[int] = None,
    time_variable: str = "t",
) -> LikelihoodResult:
    """log p_{t_min}(x) through the probability-flow ODE (Song et al. 2021, eq. 13 and 39).

    Args:
        sde: the forward SDE. score_fn: `score_fn(x, t)` -> tensor like `x`, `t` of shape (B,).
        x: (B, *event) finite points; the computation follows its device and dtype.
        method: torchdiffeq solver; None gives "dopri5" (adaptive) or "rk4" with `fixed_steps`.
        rtol, atol: tolerances of the adaptive solvers (ignored on a fixed grid), on the state (x, delta).
        divergence: "exact" or "hutchinson".
        num_probes: Hutchinson probes M (fixed for the whole solve).
        probe: "rademacher" or "gaussian".
        generator: source of the probes.
        prior_logp: `prior_logp(z) -> (B,)`, the log-density at T; None uses `sde.prior_logp`
            (N(0, prior_std^2 I)). Pass an exact p_T, e.g. `oracle.perturbed(sde, sde.T).log_prob`,
            to remove the prior mismatch.
        t_min: start time in (0, T) with `sde.marginal_std(t_min) > 0` (None: `sde.eps`); the
            result is log p_{t_min}(x). At s(t_min) = 0 the score is not finite.
        fixed_steps: number of uniform steps in the time variable (uniform in t, or in log sigma)
            for a fixed-grid `method`; the NFE is then fixed in advance (e.g. 4 per step for
            rk4), so processes can run in lock-step.
        options: extra options passed to `torchdiffeq.odeint`.
        vjp_chunk_size: basis vectors per backward pass of the exact divergence (None: automatic,
            see `score_and_divergence`).
        time_variable: "t" (default; the fewest steps with the adaptive solvers in our
            measurements) or "log_sigma" (u = log(s/a) = -lambda: on a fixed grid, uniform in
            log-SNR, the most accurate for VP / sub-VP at equal NFE). Both give log p_{t_min}(x).

    Returns:
        `LikelihoodResult` (detached tensors).

    Raises:
        ValueError: a bad option (named), or rows of `x` with inf or NaN (their indices named).
    """
    method, t_min = _check_ode_options(
        method, rtol, atol, fixed_steps, divergence, num_probes, probe, t_min, sde, time_variable
    )
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, *event); got {tuple(x.shape)}")
    if vjp_chunk_size is not None:
        check_positive_int("vjp_chunk_size", vjp_chunk_size)
    _check_finite_rows("x", x)
    probes = None if divergence == "exact" else draw_probes(x, num_probes, probe, generator)
    flow = ProbabilityFlow(
        sde, score_fn, time_variable,
        divergence=lambda w, t: score_and_divergence(score_fn, w, t, probes, vjp_chunk_size),
    )
    B = x.shape[0]
    delta0 = x.new_zeros((B,) if probes is None else (probes.shape[0], B))
    # the end points in float64, once, outside the ODE (host scalars are fine here)
    ends = torch.tensor([t_min, sde.T], dtype=torch.float64, device=x.device)
    if time_variable == "log_sigma":
        ends = -sde.half_log_snr(ends)  # u = log sigma = -lambda
    grid = None
    if fixed_steps is not None:
        # uniform in the time variable, in float64; the solver steps on it exactly (fixed_steps steps)
        grid = ends[0] + (ends[1] - ends[0]) * torch.linspace(0, 1, fixed_steps + 1, dtype=torch.float64, device=x.device)
        grid[-1] = ends[1]
    with torch.no_grad():
        z, delta = integrate(flow, (x.detach(), delta0), ends, method, grid=grid, rtol=rtol, atol=atol, options=options)
    prior = (sde.prior_logp if prior_logp is None else prior_logp)(z).to(x.dtype)
    if probes is None:
        delta_logp, std_error = delta, torch.zeros_like(delta)
    else:
        delta_logp, std_error = _mean_and_std_error(delta)
    return LikelihoodResult(
        logp=prior + delta_logp, prior_logp=prior, delta_logp=delta_logp, std_error=std_error, z=z, nfe=flow.nfe
    )
