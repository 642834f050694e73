"""Exact log-likelihood through the probability-flow ODE, and bits/dim for discrete images.

Probability-flow ODE (Song et al. 2021, eq. 13): dx/dt = f(t) x - 1/2 g(t)^2 score(x, t) =
k1 x + k2 score (`SDE.probability_flow_coeffs`). It carries p_{t_min} to p_T, and by the
instantaneous change of variables (Chen et al. 2018, Neural ODEs, Thm. 1; Song et al. 2021, eq. 39),
d/dt log p_t(x(t)) = -div f~(x(t), t), so with z = x(T) obtained from x = x(t_min),

    log p_{t_min}(x) = log p_T(z) + int_{t_min}^T div f~(x(t), t) dt,   div f~ = D k1 + k2 tr(d score / dx).

The augmented state (x, delta_logp) is integrated forward by `sde_gen.ode` (the right-hand side and
the one `torchdiffeq.odeint` call shared with the `pf_ode` sampler), in t or in u = log sigma =
-lambda(t) (`time_variable`, dx/du = (dt/du) dx/dt: the same flow, reparameterised). The linear
part's divergence D k1 is exact; only the score goes through autograd, either exactly (D
vector-Jacobian products) or with the Skilling-Hutchinson estimator E_v[v^T J v], E[v v^T] = I
(Skilling 1989; Hutchinson 1990; FFJORD, Grathwohl et al. 2019, eq. 7), whose M probes are drawn
once per solve and held fixed, so each gives an unbiased estimate of the whole integral.

Bits/dim for b-bit images (Theis et al. 2016; Ho et al. 2019, Flow++, sec. 3.1): pixels k are
dequantised uniformly, v = k + u, u ~ U[0, 1)^D, in pixel units, and mapped affinely to the model
space x = to_model(v), dx/dv = c (`model_per_pixel`); then
bits/dim = (-log p_X(x) - D log c) / (D ln 2), an upper bound on the discrete code length of k by
Jensen, never negative in expectation and the same for every affine scaling of the data.

Measurements (solver NFE per time variable, fixed-grid accuracy, Hutchinson variance, timings):
docs/likelihood.md and benchmarks/results/likelihood.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

from ._validation import check_choice, check_positive, check_positive_int
from .ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS, TIME_VARIABLES, ProbabilityFlow, integrate
from .sdes import SDE
from .utils import append_dims, batch_sum, event_numel

__all__ = [
    "LikelihoodResult",
    "BitsPerDimResult",
    "DatasetLikelihood",
    "ADAPTIVE_METHODS",
    "FIXED_GRID_METHODS",
    "DIVERGENCES",
    "PROBES",
    "log_likelihood",
    "drift_and_divergence",
    "score_and_divergence",
    "TIME_VARIABLES",
    "draw_probes",
    "bits_per_dim",
    "nats_to_bits_per_dim",
    "evaluate_dataset",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


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


def draw_probes(
    x: torch.Tensor, num_probes: int, probe: str = "rademacher", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Hutchinson probes with E[v v^T] = I, shape (num_probes, B, *event), like `x`'s dtype/device.

    Args:
        x: (B, *event), gives shape, dtype and device.
        num_probes: M.
        probe: "rademacher" (+-1 with equal probability) or "gaussian" (standard normal).
        generator: source of randomness.
    """
    shape = (num_probes,) + tuple(x.shape)
    if probe == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return (2 * bits - 1).to(x.dtype)
    return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)


#: elements of the basis block (chunk x B x D) pushed through one batched backward pass by the
#: exact divergence: bigger blocks mean fewer passes but intermediates that fall out of cache on a CPU
#: (measured: one 64 x 512 x 64 block is ~4x slower than eight of 8 x 512 x 64)
VJP_BLOCK_ELEMENTS = 2 ** 18


def score_and_divergence(
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    probes: Optional[torch.Tensor] = None,
    vjp_chunk_size: Optional[int] = None,
):
    """The score at (x, t) and the trace of its Jacobian (exact or Hutchinson), detached.

    Only the score goes through autograd: the probability-flow drift is c1(t) x + c2(t) score in
    every time variable used here, so its divergence is D c1 + c2 tr(d score / dx), the linear
    part added analytically by the callers.

    Args:
        score_fn: `score_fn(x, t)` -> tensor like `x`.
        x: (B, *event). t: (B,) in `x`'s dtype.
        probes: None for the exact trace; else (M, B, *event) Hutchinson probes.
        vjp_chunk_size: exact trace only: basis vectors per batched backward pass
            (None: as many as fit in `VJP_BLOCK_ELEMENTS`; D: all in one pass).

    Returns:
        `(score, trace)`: score like `x`; trace (B,) for the exact trace, (M, B) of
        v_m^T (d score / dx) v_m per probe else.

    The score is evaluated once, under `torch.enable_grad()` (callers often sit in `no_grad`),
    differentiated with respect to a detached copy of `x` only; `retain_graph` is set only between
    blocks of the same evaluation and nothing uses `create_graph`, so no graph survives the call.
    No host synchronisation (the block loop depends on shapes only).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = score_fn(x_in, t)
        B, D = x.shape[0], event_numel(x)
        if probes is None:
            # tr J = sum_i (e_i^T J)_i, the rows e_i^T J computed in blocks of basis vectors
            chunk = vjp_chunk_size or max(1, VJP_BLOCK_ELEMENTS // max(1, B * D))
            chunk = min(chunk, D)
            eye = torch.eye(D, device=x.device, dtype=x.dtype)
            trace = x.new_zeros(B)
            for lo in range(0, D, chunk):
                e = eye[lo : lo + chunk]  # (c, D)
                c, more = e.shape[0], lo + chunk < D
                basis = e[:, None, :].expand(c, B, D).reshape((c,) + tuple(x.shape))
                if c == 1:
                    (rows,) = torch.autograd.grad(score, x_in, basis[0], retain_graph=more)
                    rows = rows[None]
                else:
                    (rows,) = torch.autograd.grad(score, x_in, basis, is_grads_batched=True, retain_graph=more)
                trace = trace + (rows.reshape(c, B, D) * e[:, None, :]).sum((0, 2))
        elif probes.shape[0] == 1:
            (vjp,) = torch.autograd.grad(score, x_in, probes[0])
            trace = batch_sum(vjp * probes[0])[None]
        else:
            (vjp,) = torch.autograd.grad(score, x_in, probes, is_grads_batched=True)
            trace = (vjp * probes).flatten(2).sum(2)
    return score.detach(), trace.detach()


def drift_and_divergence(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    t: torch.Tensor,
    probes: Optional[torch.Tensor] = None,
    vjp_chunk_size: Optional[int] = None,
):
    """The probability-flow drift dx/dt and its divergence at (x, t), detached.

    drift = k1 x + k2 score, div = D k1 + k2 tr(d score / dx) with (k1, k2) =
    `sde.probability_flow_coeffs(t)` = (f(t), -1/2 g(t)^2): the linear part's divergence is exact,
    only the score's Jacobian trace goes through autograd (for Hutchinson, v^T J_score v per probe;
    the estimate stays unbiased and the linear part adds no variance).

    Args:
        sde: the SDE. score_fn: `score_fn(x, t)` -> tensor like `x`.
        x: (B, *event). t: (B,) in `x`'s dtype.
        probes: None for the exact divergence; else (M, B, *event) Hutchinson probes.
        vjp_chunk_size: see `score_and_divergence`.

    Returns:
        `(drift, div)`: drift like `x`; div (B,) for the exact divergence, (M, B) per probe else.
    """
    score, trace = score_and_divergence(score_fn, x, t, probes, vjp_chunk_size)
    k1, k2 = (k.to(x.dtype) for k in sde.probability_flow_coeffs(t))
    drift = append_dims(k1, x.ndim) * x + append_dims(k2, x.ndim) * score
    return drift, event_numel(x) * k1 + k2 * trace


def _check_t_min(sde: SDE, t_min) -> float:
    """t_min in (0, T) with s(t_min) > 0: the score (a net's output is scaled by 1 / s) and Tweedie
    divide by s(t), so t_min = 0, or a t_min whose s underflows, has no finite score."""
    t_min = sde.eps if t_min is None else t_min
    allowed = f"allowed: (0, T) = (0, {sde.T}), where marginal_std(t_min) > 0"
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0 < t_min < sde.T:
        raise ValueError(f"t_min must lie in (0, T) ({allowed}); got {t_min!r}")
    std = float(sde.marginal_std(torch.tensor(float(t_min), dtype=torch.float64)))
    if not std > 0:
        raise ValueError(f"t_min must lie in (0, T) with marginal_std(t_min) > 0 ({allowed}); got {t_min!r}, "
                         f"whose marginal_std is {std!r}")
    return float(t_min)


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
    return method, _check_t_min(sde, t_min)


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
        delta_logp = delta.mean(0)
        if delta.shape[0] > 1:
            std_error = delta.std(0, unbiased=True) / math.sqrt(delta.shape[0])
        else:
            std_error = torch.full_like(delta_logp, float("nan"))
    return LikelihoodResult(
        logp=prior + delta_logp, prior_logp=prior, delta_logp=delta_logp, std_error=std_error, z=z, nfe=flow.nfe
    )


# ---------------------------------------------------------------------------- bits per dimension
def _log_abs_jacobian(model_per_pixel, x: torch.Tensor) -> torch.Tensor:
    """log |det dx/dv| = sum_i log c_i for the affine pixel -> model map, shape (B,) or scalar."""
    c = torch.as_tensor(model_per_pixel, dtype=x.dtype, device=x.device)
    if (c <= 0).any():  # a constant of the dataset, checked once per call, outside the ODE
        raise ValueError("model_per_pixel must be > 0 (dx/dv of an increasing affine map)")
    if c.ndim == 0:
        return event_numel(x) * torch.log(c)
    return batch_sum(torch.log(c).expand(x.shape))


def nats_to_bits_per_dim(nll_nats: torch.Tensor, dim: int) -> torch.Tensor:
    """Negative log-likelihood in nats per sample -> bits per dimension."""
    return nll_nats / (dim * math.log(2.0))


@dataclass
class BitsPerDimResult:
    """What `bits_per_dim` returns.

    Attributes:
        bpd: (B,) bits/dim per image, averaged over the dequantisation draws.
        std_error: (B,) standard error of `bpd` over the draws (std / sqrt(num_dequant));
            NaN when num_dequant = 1.
        draws: (num_dequant, B) bits/dim of every draw.
        nfe: total drift evaluations over all draws.
    """

    bpd: torch.Tensor
    std_error: torch.Tensor
    draws: torch.Tensor
    nfe: int

    @property
    def mean(self) -> torch.Tensor:
        """Mean bits/dim over the batch (0-d tensor)."""
        return self.bpd.mean()

    @property
    def mean_std_error(self) -> torch.Tensor:
        """Standard error of `mean` over the batch (images as i.i.d. draws of the data)."""
        n = self.bpd.shape[0]
        return self.bpd.std(unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(self.mean, float("nan"))


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    pixels: torch.Tensor,
    dataset_or_map,
    num_dequant: int = 1,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    **ode_kwargs,
) -> BitsPerDimResult:
    """Bits/dim of integer images under the model, with uniform dequantisation (module docstring).

    Args:
        sde, score_fn: the model (the score acts in model space).
        pixels: (B, *event) integer values k in {0, ..., 2^bits - 1} (any integer or float dtype
            holding integers).
        dataset_or_map: any object with `to_model(v)` (pixel units -> model space, affine) and
            `model_per_pixel` (dx/dv, a float or a tensor broadcastable to the event shape).
        num_dequant: number of dequantisation draws u ~ U[0, 1)^D averaged per image.
        generator: source of the dequantisation noise (and of Hutchinson probes).
        dtype: floating dtype of the computation; None keeps a floating `pixels` dtype, else
            torch's default dtype.
        **ode_kwargs: passed to `log_likelihood` (method, rtol, atol, divergence, ...).

    Returns:
        `BitsPerDimResult`.
    """
    check_positive_int("num_dequant", num_dequant)
    for attr in ("to_model", "model_per_pixel"):
        if not hasattr(dataset_or_map, attr):
            raise ValueError(f"dataset_or_map must have `to_model` and `model_per_pixel`; missing {attr!r}")
    if dtype is None:
        dtype = pixels.dtype if pixels.is_floating_point() else torch.get_default_dtype()
    k = pixels.to(dtype)
    draws, nfe = [], 0
    for _ in range(num_dequant):
        u = torch.rand(k.shape, generator=generator, device=k.device, dtype=dtype)
        x = dataset_or_map.to_model(k + u)
        res = log_likelihood(sde, score_fn, x, generator=generator, **ode_kwargs)
        nll_pixel = -res.logp - _log_abs_jacobian(dataset_or_map.model_per_pixel, x)
        draws.append(nats_to_bits_per_dim(nll_pixel, event_numel(x)))
        nfe += res.nfe
    draws = torch.stack(draws)
    if num_dequant > 1:
        std_error = draws.std(0, unbiased=True) / math.sqrt(num_dequant)
    else:
        std_error = torch.full_like(draws[0], float("nan"))
    return BitsPerDimResult(bpd=draws.mean(0), std_error=std_error, draws=draws, nfe=nfe)


# ---------------------------------------------------------------------------- whole data sets
@dataclass
class DatasetLikelihood:
    """Likelihood of a whole evaluation set.

    Attributes:
        unit: "bits/dim" (images, dequantised) or "nats" (continuous data: log p per sample).
        values: (N,) per-sample values (bits/dim, or log-likelihood in nats), on the CPU.
        estimator_std_error: (N,) per-sample standard error of the estimator (Hutchinson probes
            or dequantisation draws; zeros/NaN where not applicable), on the CPU.
        mean: mean of `values`. std_error: its standard error over the set, std / sqrt(N).
        dim: data dimension D. nfe: total drift evaluations. seconds: wall time.
    """

    unit: str
    values: torch.Tensor
    estimator_std_error: torch.Tensor
    mean: float
    std_error: float
    dim: int
    nfe: int
    seconds: float
    extra: Dict[str, Any] = field(default_factory=dict)


def evaluate_dataset(
    sde: SDE,
    score_fn: ScoreFn,
    data: torch.Tensor,
    *,
    dataset_or_map=None,
    batch_size: int = 256,
    num_dequant: int = 1,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    **ode_kwargs,
) -> DatasetLikelihood:
    """Likelihood of every sample of `data`, batch by batch, with an optional tqdm bar.

    Args:
        sde, score_fn: the model.
        data: (N, *event). Integer pixels when `dataset_or_map` is given (bits/dim), else
            continuous points in model space (log-likelihood in nats).
        dataset_or_map: object with `to_model` and `model_per_pixel` for image data, else None.
        batch_size: samples per ODE solve.
        num_dequant: dequantisation draws per image (image data only).
        generator: randomness for dequantisation and probes.
        device: where to compute (None: where `data` lives); results come back to the CPU once
            per batch, outside the ODE.
        dtype: floating dtype (None: `data`'s if floating, else torch's default).
        progress: show a tqdm progress bar (off by default in library calls).
        **ode_kwargs: passed to `log_likelihood`.

    Raises:
        ValueError: a bad option, or rows of `data` with inf or NaN (their indices named).
    """
    from tqdm.auto import tqdm

    check_positive_int("batch_size", batch_size)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, *event) with N >= 1; got {tuple(data.shape)}")
    _check_finite_rows("data", data)  # before any solve, with the rows' indices in the whole set
    device = data.device if device is None else torch.device(device)
    if dtype is None:
        dtype = data.dtype if data.is_floating_point() else torch.get_default_dtype()
    values, errs, nfe = [], [], 0
    start = time.perf_counter()
    N = data.shape[0]
    with tqdm(total=N, disable=not progress, desc="likelihood", unit="sample") as bar:
        for lo in range(0, N, batch_size):
            batch = data[lo : lo + batch_size].to(device)
            if dataset_or_map is not None:
                res = bits_per_dim(
                    sde, score_fn, batch, dataset_or_map, num_dequant=num_dequant, generator=generator,
                    dtype=dtype, **ode_kwargs,
                )
                values.append(res.bpd.cpu())
                errs.append(res.std_error.cpu())
            else:
                res = log_likelihood(sde, score_fn, batch.to(dtype), generator=generator, **ode_kwargs)
                values.append(res.logp.cpu())
                errs.append(res.std_error.cpu())
            nfe += res.nfe
            bar.update(batch.shape[0])
    values, errs = torch.cat(values), torch.cat(errs)
    std_error = float(values.std(unbiased=True)) / math.sqrt(N) if N > 1 else float("nan")
    return DatasetLikelihood(
        unit="bits/dim" if dataset_or_map is not None else "nats",
        values=values,
        estimator_std_error=errs,
        mean=float(values.mean()),
        std_error=std_error,
        dim=math.prod(data.shape[1:]),
        nfe=nfe,
        seconds=time.perf_counter() - start,
    )
