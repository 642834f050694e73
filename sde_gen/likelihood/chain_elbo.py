"""The evidence lower bound of the discrete reverse chain on a time grid (Ho et al. 2020, eq. 5;
Sohl-Dickstein et al. 2015), for every affine SDE and every reverse-variance choice.

On the grid t_0 = t_min < t_1 < ... < t_K = T the forward chain is exact (`SDE.transition_coeffs`)
and the reverse model is Gaussian, p(x_{t_{k-1}} | x_{t_k}) = N(c_t x_t + c_0 x0_hat, sigma_k^2 I) with
x0_hat = (x_t + s_t^2 score(x_t, t)) / a_t (Tweedie) and (c_t, c_0) those of the posterior
q(x_{t_{k-1}} | x_{t_k}, x_0) (`SDE.posterior`). For continuous data the chain ends in a Gaussian decoder
p(x_0 | x_{t_min}) = N(x0_hat, sigma_0^2 I). Then

    log p(x_0) >= ELBO = -(L_T + sum_{k=1}^K L_{k-1} + L_0),
    L_T     = KL(q(x_T | x_0) || N(0, prior_std^2 I)),
    L_{k-1} = E_q KL(q(x_{t_{k-1}} | x_{t_k}, x_0) || p(x_{t_{k-1}} | x_{t_k}))
            = E_q [ d/2 (lambda^2 / sigma^2 - 1 + log(sigma^2 / lambda^2)) + c_0^2 ||x_0 - x0_hat||^2 / (2 sigma^2) ],
    L_0     = E_q [ -log N(x_0; x0_hat(x_{t_min}), sigma_0^2 I) ].

Reverse variances sigma_k^2:
    "beta"       v_{t_k | t_{k-1}}, the forward transition variance (DDPM's sigma^2 = beta_t),
    "posterior"  lambda_k^2, the posterior variance (DDPM's sigma^2 = beta_tilde_t),
    "analytic"   Bao et al. 2022's KL-optimum from Gamma_t (`sde_gen.analytic`), clipped to Thm. 2's interval,
    "analytic_extended"  Bao et al. 2022b's per-dimension optimum lambda^2 + c_0^2 (s/a)^2 R_{t,i} from the
                 fitted residual R_t (`sde_gen.analytic.extended_variance`): the diagonal, state-independent
                 variance that maximises this bound for the model's mean, so never below "analytic"'s in
                 expectation (with the R_t of the same score).
The decoder's posterior variance is 0, so both fixed choices use its upper end, the forward noise of the
scaled variable sigma_0^2 = (s(t_min) / a(t_min))^2 (what "beta" gives at the step t_min -> 0);
"analytic" uses its optimum (s / a)^2 (1 - s^2 Gamma_{t_min}), "analytic_extended" (s / a)^2 R_{t_min, i}.

Discrete data (images with L intensity levels, `dataset_or_map`): the chain starts at the bin centre
x_0 = to_model(k + 1/2) of each integer pixel k, and L_0 is the discretised Gaussian decoder (Ho et
al. 2020, eq. 13) with the bins of `bits_per_dim`'s dequantisation, [to_model(k), to_model(k + 1)),
the outer two extended to -inf and +inf:

    L_0 = -sum_i log [Phi((to_model(k_i + 1) - x0_hat_i) / sigma_0) - Phi((to_model(k_i) - x0_hat_i) / sigma_0)],

so the ELBO bounds log P(k) of the integer pixels, and its bits/dim are in the units of `bits_per_dim`.

Each expectation over x_{t_k} ~ q(. | x_0) is estimated with one draw per data point and step (an
unbiased estimate of the ELBO); K score evaluations per data point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._validation import check_choice, check_positive_int
from ..analytic import analytic_variance, extended_variance, step_coefficients
from ..parameterization import x0_from_score
from ..samplers.grids import GRIDS, time_grid
from ..sdes import SDE
from ..utils import append_dims, batch_sum, event_numel

__all__ = ["ELBO_VARIANCES", "ELBOResult", "elbo", "discretised_gaussian_log_prob"]

ELBO_VARIANCES = ("beta", "posterior", "analytic", "analytic_extended")


@dataclass
class ELBOResult:
    """What `elbo` returns; every tensor has shape (B,) in float64, in nats unless named otherwise.

    Attributes:
        elbo: the per-sample bound on log p(x_0).
        bits_per_dim: -elbo / (d log 2).
        prior_term: L_T.
        diffusion_term: sum_k L_{k-1} over the K steps.
        decoder_term: L_0.
        num_steps: K.
        variance: the reverse-variance choice.
    """

    elbo: torch.Tensor
    bits_per_dim: torch.Tensor
    prior_term: torch.Tensor
    diffusion_term: torch.Tensor
    decoder_term: torch.Tensor
    num_steps: int
    variance: str


def _log_normal_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log (Phi(hi) - Phi(lo)) for standardised edges lo < hi (either may be infinite), accurate in both
    tails: in the upper half it uses Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)."""
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretised_gaussian_log_prob(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dataset_or_map) -> torch.Tensor:
    """log P(k) of integer pixels under a Gaussian N(mean, std^2) in model space, discretised to the bins
    [to_model(k), to_model(k + 1)) of `bits_per_dim`'s dequantisation, the outer bins open (module docstring).

    Args:
        pixels: (B, *event) integers in {0, ..., L - 1} (any dtype holding integers).
        mean: (B, *event) decoder means in model space. std: broadcastable to `mean`, > 0.
        dataset_or_map: an object with `to_model(v)` (increasing affine, pixel units -> model space) and
            `num_levels` L.

    Returns:
        (B, *event) float64 log-probabilities; exp of them over k = 0 ... L - 1 sums to 1.
    """
    L = dataset_or_map.num_levels
    k = pixels.to(torch.float64)
    mean, std = mean.to(torch.float64), torch.as_tensor(std, dtype=torch.float64, device=mean.device)
    inf = torch.full_like(k, math.inf)
    lower = torch.where(k <= 0, -inf, (torch.as_tensor(dataset_or_map.to_model(k), dtype=torch.float64) - mean) / std)
    upper = torch.where(k >= L - 1, inf, (torch.as_tensor(dataset_or_map.to_model(k + 1), dtype=torch.float64) - mean) / std)
    return _log_normal_interval(lower, upper)


def _check_pixel_map(dataset_or_map, x: torch.Tensor) -> None:
    for attr in ("to_model", "num_levels"):
        if not hasattr(dataset_or_map, attr):
            raise ValueError(f"dataset_or_map must have `to_model` and `num_levels`; missing {attr!r}")
    L = dataset_or_map.num_levels
    if isinstance(L, bool) or not isinstance(L, int) or L < 2:
        raise ValueError(f"dataset_or_map.num_levels must be an integer >= 2; got {L!r}")
    if not bool(((x >= 0) & (x <= L - 1) & (x == torch.round(x))).all()):
        raise ValueError(f"x must hold integer pixels in [0, {L - 1}] when dataset_or_map is given")


def _reverse_variances(sde: SDE, ts: torch.Tensor, variance: str, gamma, residual) -> torch.Tensor:
    """sigma_k^2 for the steps ts[k + 1] -> ts[k] of the increasing grid ts (K + 1,), then the
    decoder's sigma_0^2 at index K: shape (K + 1,) ((K + 1, *event) for "analytic_extended"), float64."""
    t, u = ts[1:], ts[:-1]
    t_all = torch.cat([t, ts[:1]])
    u_all = torch.cat([u, torch.zeros_like(ts[:1])])
    if variance == "analytic_extended":
        return extended_variance(sde, t_all, u_all, residual(t_all).to(torch.float64))
    if variance == "analytic":
        return analytic_variance(sde, t_all, u_all, gamma(t_all).to(torch.float64))
    a0, s0 = sde.marginal_coeffs(ts[:1])
    dec = (s0 / a0) ** 2
    if variance == "beta":
        return torch.cat([sde.transition_coeffs(u, t)[1], dec])
    return torch.cat([step_coefficients(sde, t, u)[2], dec])


def elbo(
    sde: SDE,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num_steps: int,
    variance: str = "posterior",
    gamma: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    residual: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    grid: str = "uniform",
    t_min: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    dataset_or_map=None,
) -> ELBOResult:
    """The discrete-chain ELBO of data `x` (module docstring), one unbiased draw per sample.

    Args:
        sde: the forward SDE. score_fn: `score_fn(x, t)` (a model or an oracle's exact score).
        x: (B, *event) continuous data x_0, or integer pixels when `dataset_or_map` is given.
        num_steps: K, the number of reverse steps (K + 1 grid times from t_min to T).
        variance: "beta", "posterior", "analytic" or "analytic_extended".
        gamma: for "analytic", Gamma_t = E||score||^2 / d as a function of (N,) float64 times,
            e.g. the `GammaTable` of `sde_gen.estimate_gamma` on this grid, or a closed form.
        residual: for "analytic_extended", R_t = E (z + s_t score)^2 per dimension as a function of
            (N,) float64 times returning (N, *event), e.g. `sde_gen.estimate_residual` on this grid.
        grid: the time grid ("uniform", "log_snr", "karras"; `samplers.grids.time_grid`).
        t_min: the last time (None: `sde.eps`).
        generator: randomness of the draws x_{t_k} ~ q(. | x_0).
        dataset_or_map: for images, an object with `to_model` and `num_levels` (an image dataset): the
            chain starts at the bin centres and L_0 is the discretised decoder (module docstring).

    Returns:
        an `ELBOResult` (for images: a bound on log P of the integer pixels, bits/dim like `bits_per_dim`).

    Raises:
        ValueError naming `variance`, `num_steps`, `grid`, `t_min`, `gamma`, `residual` or
        `dataset_or_map` before any work.
    """
    check_choice("variance", variance, ELBO_VARIANCES)
    num_steps = check_positive_int("num_steps", num_steps)
    check_choice("grid", grid, GRIDS)
    if variance == "analytic" and not callable(gamma):
        raise ValueError("gamma must be a callable t -> Gamma_t (e.g. sde_gen.estimate_gamma(...)) for "
                         f"variance='analytic'; got {gamma!r}")
    if variance == "analytic_extended" and not callable(residual):
        raise ValueError("residual must be a callable t -> R_t of shape (N, *event) (e.g. sde_gen.estimate_residual(...)) "
                         f"for variance='analytic_extended'; got {residual!r}")
    pixels = None
    if dataset_or_map is not None:
        _check_pixel_map(dataset_or_map, x)
        pixels = x
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        x = torch.as_tensor(dataset_or_map.to_model(pixels.to(dtype) + 0.5), dtype=dtype)  # the bin centres
    ts = time_grid(sde, num_steps, kind=grid, t_min=t_min, device=x.device).flip(0)  # increasing
    sig2 = _reverse_variances(sde, ts, variance, gamma, residual)
    if sig2.shape[1:] not in ((), x.shape[1:]):
        raise ValueError(f"residual must return values of the data's event shape {tuple(x.shape[1:])}; "
                         f"got {tuple(sig2.shape[1:])}")
    c_t, c_0, lam2 = step_coefficients(sde, ts[1:], ts[:-1])
    d, B, nd = event_numel(x), x.shape[0], x.ndim
    f64 = dict(dtype=torch.float64, device=x.device)

    def denoise(t_val: torch.Tensor):
        t = t_val.to(x.dtype).expand(B).clone()
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = sde.perturb(x, t, z)
        return x0_from_score(sde, x_t, t, score_fn(x_t, t))

    def draw_and_denoise(t_val: torch.Tensor):
        return (x - denoise(t_val)).to(torch.float64) ** 2  # (x_0 - x0_hat)^2 per dimension, (B, *event)

    with torch.no_grad():
        # L_T: KL(N(a_T x_0, s_T^2 I) || N(0, p^2 I))
        a_T, s_T = (c.to(torch.float64) for c in sde.marginal_coeffs(ts[-1:]))
        p2 = sde.prior_std ** 2
        x64 = x.to(torch.float64)
        prior = 0.5 * (d * s_T ** 2 / p2 + a_T ** 2 * batch_sum(x64 ** 2) / p2 - d + d * torch.log(p2 / s_T ** 2))
        diffusion = torch.zeros(B, **f64)
        for k in range(num_steps):  # the step ts[k + 1] -> ts[k]
            sq = draw_and_denoise(ts[k + 1])
            s2 = sig2[k].expand(x.shape[1:])  # per dimension (a scalar variance broadcast)
            ratio = lam2[k] / s2
            diffusion = (diffusion + 0.5 * (ratio - 1 - torch.log(ratio)).sum()
                         + batch_sum(c_0[k] ** 2 * sq / (2 * s2)))
        s2 = sig2[-1].expand(x.shape[1:])
        if pixels is None:  # the Gaussian density at x_0
            decoder = 0.5 * torch.log(2 * math.pi * s2).sum() + batch_sum(draw_and_denoise(ts[0]) / (2 * s2))
        else:  # the discretised Gaussian's probability of the pixel's bin
            decoder = -batch_sum(discretised_gaussian_log_prob(pixels, denoise(ts[0]), s2.sqrt(), dataset_or_map))
    total = prior + diffusion + decoder
    return ELBOResult(
        elbo=-total, bits_per_dim=total / (d * math.log(2.0)), prior_term=prior, diffusion_term=diffusion,
        decoder_term=decoder, num_steps=num_steps, variance=variance,
    )
