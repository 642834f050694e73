"""Bits/dim of b-bit images by uniform dequantisation, and the likelihood of a whole data set.

Theis et al. 2016; Ho et al. 2019 (Flow++, sec. 3.1): pixels k are dequantised, v = k + u,
u ~ U[0, 1)^D, mapped affinely to the model space x = to_model(v) with dx/dv = c, and
bits/dim = (-log p_X(x) - D log c) / (D ln 2): by Jensen an upper bound on the discrete code
length of k, the same for every affine scaling of the data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .._validation import check_positive_int
from ..sdes import SDE
from ..sdes.base import ScoreFn
from ..utils import batch_sum, event_numel
from .change_of_variables import _check_finite_rows, _mean_and_std_error, log_likelihood


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
        return _mean_and_std_error(self.bpd)[1]


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
    bpd, std_error = _mean_and_std_error(draws)
    return BitsPerDimResult(bpd=bpd, std_error=std_error, draws=draws, nfe=nfe)


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
