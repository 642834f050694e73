"""Sample quality against exact targets, and timing of a sampler run.

* `oracle_metrics`: sliced W2 to fresh exact data with its noise floor (the same distance between
  two independent exact samples of the same size), the mode-weight error for mixtures, the
  Bures-Wasserstein error of the sample moments for a single Gaussian, and the prior mismatch.
* `prior_mismatch`: W2(p_T, prior), and the error that mismatch leaves at t = 0 through the exact
  probability-flow map. For Gaussian data N(m, U diag(lambda) U^T) that map is affine per
  eigen-direction (Song et al. 2021, eq. 13 with the exact score):
      x_0 = m + U diag(sqrt(lambda / v_T)) U^T (x_T - a_T m),   v_T = a_T^2 lambda + s_T^2,
  so a perfect ODE solver started from the prior produces
  N(m - U D U^T a_T m, prior_std^2 U D^2 U^T), D = diag(sqrt(lambda / v_T)).
* `class_metrics`: for class-conditional samples, the class purity (the share of samples whose
  exact posterior class, argmax_y p_0(y | x), is the requested one) and, per class, sliced W2 to
  fresh exact samples of p_0(x | y) of the same size with its noise floor.
* `TimedScore` / `timed_sample`: the wall time split into time inside the score function and the
  sampler's own time; on CUDA with recorded events, so the split costs no host syncs.

Used by the sampling app, the training app's evaluation and the sampler benchmark.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .metrics import bures_wasserstein, gaussian_w2_to_target, mode_weight_error, noise_floor, sliced_wasserstein
from .oracles import GaussianMixture

__all__ = ["TimedScore", "timed_sample", "oracle_metrics", "class_metrics", "prior_mismatch"]

log = logging.getLogger(__name__)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TimedScore:
    """Wraps `score_fn`, counting calls and accumulating the time spent inside it.

    On CUDA each call is bracketed by two recorded events (no host synchronisation); `seconds()`
    sums their elapsed times and must be called after a `torch.cuda.synchronize()`. On other
    devices it uses `time.perf_counter` around the call (the computation is synchronous there).
    """

    def __init__(self, score_fn: ScoreFn, device: torch.device):
        self.score_fn = score_fn
        self.cuda = torch.device(device).type == "cuda"
        self.calls = 0
        self._seconds = 0.0
        self._events: List[Tuple[Any, Any]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.score_fn(x, t)
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.score_fn(x, t)
        self._seconds += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        """Total seconds inside the score function so far (synchronise CUDA first)."""
        if self.cuda:
            self._seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self._events = []
        return self._seconds


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_sample(
    sampler,
    sde,
    score_fn: ScoreFn,
    shape: Optional[Sequence[int]] = None,
    x_T: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
    callback=None,
) -> Tuple[Any, Dict[str, float]]:
    """Run `sampler` once and time it (`callback(i, t_next, x)` is passed on to the sampler).

    Returns:
        `(SampleResult, timing)` with timing = {"total_s", "score_s", "sampler_s", "score_calls"};
        sampler_s = total_s - score_s is the sampler's own time (grid, arithmetic, noise).
    """
    dev = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    timed = TimedScore(score_fn, dev)
    _sync(dev)
    t0 = time.perf_counter()
    result = sampler(sde, timed, shape=shape, x_T=x_T, generator=generator, device=device, dtype=dtype,
                     callback=callback)
    _sync(dev)
    total = time.perf_counter() - t0
    score_s = timed.seconds()
    return result, {"total_s": total, "score_s": score_s, "sampler_s": total - score_s, "score_calls": timed.calls}


# ---- metrics against an oracle ----
def prior_mismatch(oracle: GaussianMixture, sde) -> Dict[str, float]:
    """Closed-form prior mismatch for a single-Gaussian target (see the module docstring).

    Returns:
        {"w2_T": W2(p_T, prior), "w2_0_ode": W2 at t = 0 of the exact probability-flow map
        started from the prior instead of p_T}.
    """
    if oracle.num_components != 1:
        raise ValueError(f"prior_mismatch needs a single Gaussian (num_components=1); got {oracle.num_components}")
    D = oracle.dim
    eye = torch.eye(D, dtype=torch.float64)
    p_T = oracle.perturbed(sde, sde.T)
    prior_var = float(sde.prior_std) ** 2
    w2_T = bures_wasserstein(p_T.mean(), p_T.covariance(), torch.zeros(D, dtype=torch.float64), prior_var * eye)
    a_T, s_T = (float(c) for c in sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64)))
    m, cov = oracle.mean(), oracle.covariance()
    lam, U = torch.linalg.eigh(cov)
    d = torch.sqrt(lam / (a_T ** 2 * lam + s_T ** 2))
    flow = (U * d) @ U.T  # U diag(d) U^T
    mean_out = m - a_T * (flow @ m)
    cov_out = prior_var * (U * d ** 2) @ U.T
    w2_0 = bures_wasserstein(mean_out, cov_out, m, cov)
    return {"w2_T": float(w2_T), "w2_0_ode": float(w2_0)}


def oracle_metrics(
    samples: torch.Tensor,
    oracle: GaussianMixture,
    sde=None,
    num_projections: int = 500,
    replicates: int = 10,
    seed: int = 12345,
    floor_cache: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Quality of `samples` (N, D) against the exact distribution `oracle`, with noise floors.

    Sliced W2 uses the same `num_projections` directions (seeded by `seed`) for the sample and
    every floor replicate, against fresh exact data of the same size N drawn from `seed + 1`.

    Pass the same dict as `floor_cache` to calls with the same oracle, size and seeds to compute
    the noise floors once (they do not depend on the samples).

    Returns:
        A flat dict: sw2, sw2_floor_mean, sw2_floor_std, sw2_ratio; mode_weight_error and its
        floor for mixtures; bures_wasserstein, its floor and ratio, and prior_mismatch_w2_T /
        prior_mismatch_w2_0_ode (when `sde` is given) for a single Gaussian.
    """
    x = samples.detach().flatten(1).to(torch.float64)
    n, dev = x.shape[0], x.device
    oracle = oracle.to(dev)
    proj_seed = seed

    def sw2(a, b):
        return sliced_wasserstein(a, b, num_projections, torch.Generator(dev).manual_seed(proj_seed))

    data_gen = torch.Generator(dev).manual_seed(seed + 1)

    def exact(k, g):
        return oracle.sample(k, g, device=dev, dtype=torch.float64)

    out: Dict[str, Any] = {"num_samples": n, "finite": bool(torch.isfinite(x).all())}
    if not out["finite"]:
        log.warning("samples contain non-finite values; metrics are computed on the finite rows")
        x = x[torch.isfinite(x).all(1)]
        if x.shape[0] < 2:
            return out
    fresh = exact(n, data_gen)
    out["sw2"] = float(sw2(x, fresh))
    key = (n, replicates, num_projections, seed, oracle.dim, oracle.num_components)
    floors = floor_cache.get(key) if floor_cache is not None else None
    if floors is None:
        floors = {}
        floor = noise_floor(exact, n, sw2, replicates, data_gen)
        floors["sw2_floor_mean"], floors["sw2_floor_std"] = floor["mean"], floor["std"]
        if oracle.num_components > 1:
            errs = torch.stack([mode_weight_error(exact(n, data_gen), oracle) for _ in range(replicates)])
            floors["mode_weight_floor_mean"], floors["mode_weight_floor_std"] = float(errs.mean()), float(errs.std())
        else:
            bw = torch.stack([gaussian_w2_to_target(exact(n, data_gen), oracle) for _ in range(replicates)])
            floors["bw_floor_mean"], floors["bw_floor_std"] = float(bw.mean()), float(bw.std())
        if floor_cache is not None:
            floor_cache[key] = floors
    out.update(floors)
    out["sw2_ratio"] = out["sw2"] / floors["sw2_floor_mean"]
    out["noise_floor_replicates"] = replicates
    if oracle.num_components > 1:
        out["mode_weight_error"] = float(mode_weight_error(x, oracle))
    else:
        out["bures_wasserstein"] = float(gaussian_w2_to_target(x, oracle))
        out["bw_ratio"] = out["bures_wasserstein"] / out["bw_floor_mean"]
        if sde is not None:
            # closed form on CPU copies: the caller's modules stay where they are
            pm = prior_mismatch(copy.deepcopy(oracle).cpu(), copy.deepcopy(sde).cpu())
            out["prior_mismatch_w2_T"], out["prior_mismatch_w2_0_ode"] = pm["w2_T"], pm["w2_0_ode"]
    return out


def class_metrics(
    samples: torch.Tensor,
    labels: torch.Tensor,
    oracle: GaussianMixture,
    num_projections: int = 500,
    replicates: int = 10,
    seed: int = 12345,
) -> Dict[str, Any]:
    """Class purity and per-class quality of class-conditional `samples` against the exact laws.

    Args:
        samples: (N, D) samples, row i requested from class `labels[i]`.
        labels: (N,) requested classes in [0, C) (integers).
        oracle: the labelled mixture (`classes` maps its components to classes).
        num_projections, replicates, seed: as in `oracle_metrics` (each class uses its own
            exact data stream, seeded from `seed` and the class).

    Returns:
        {"class_purity": share of the finite rows whose MAP class under p_0 is the requested one,
         "class_purity_min": the lowest per-class purity, "sw2_ratio_max": the highest per-class
         sw2 / floor mean, "per_class": {c: {"num_samples", "purity", "sw2", "sw2_floor_mean",
         "sw2_floor_std", "sw2_ratio"}}} for every requested class (sliced W2 only with >= 2 samples).

    Raises:
        ValueError naming `samples` or `labels` (wrong shape, float or out-of-range labels).
    """
    x = samples.detach().flatten(1).to(torch.float64)
    dev = x.device
    oracle = oracle.to(dev)
    if x.shape[1] != oracle.dim:
        raise ValueError(f"samples must have shape (N, {oracle.dim}) for this oracle; got {tuple(samples.shape)}")
    if isinstance(labels, (list, tuple)):
        labels = torch.as_tensor(labels)
    # integer labels in [0, C), one per sample: a float label is an error, never truncated
    labels = oracle.check_labels(labels, x.shape[0], dev, name="labels")
    finite = torch.isfinite(x).all(1)
    x, labels = x[finite], labels[finite]
    out: Dict[str, Any] = {"per_class": {}}
    if x.shape[0] == 0:
        return out
    hit = oracle.class_log_posterior(x).argmax(1) == labels
    out["class_purity"] = float(hit.double().mean())
    for c in sorted(set(labels.tolist())):
        rows = labels == c
        xc, n = x[rows], int(rows.sum())
        row: Dict[str, Any] = {"num_samples": n, "purity": float(hit[rows].double().mean())}
        if n >= 2:
            target = oracle.conditional(c).to(dev)
            g_data = torch.Generator(dev).manual_seed(seed + 1 + 7919 * (c + 1))

            def sw2(a, b):
                return sliced_wasserstein(a, b, num_projections, torch.Generator(dev).manual_seed(seed))

            def exact(k, g, target=target):
                return target.sample(k, g, device=dev, dtype=torch.float64)

            row["sw2"] = float(sw2(xc, exact(n, g_data)))
            floor = noise_floor(exact, n, sw2, replicates, g_data)
            row["sw2_floor_mean"], row["sw2_floor_std"] = floor["mean"], floor["std"]
            row["sw2_ratio"] = row["sw2"] / floor["mean"]
        out["per_class"][c] = row
    out["class_purity_min"] = min(r["purity"] for r in out["per_class"].values())
    ratios = [r["sw2_ratio"] for r in out["per_class"].values() if "sw2_ratio" in r]
    if ratios:
        out["sw2_ratio_max"] = max(ratios)
    return out
