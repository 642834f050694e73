"""Conversions from the score to the two other outputs of a denoiser at (x_t, t), in one place.

With x_t = a(t) x_0 + s(t) z and the score grad log p_t(x_t):
    noise prediction   eps_hat = -s(t) score                              (Ho et al. 2020)
    data prediction    x0_hat  = (x_t + s(t)^2 score) / a(t)              (Tweedie's formula;
                                                                           Efron 2011, Kadkhodaie & Simoncelli 2021)
Networks trained by `losses.dsm_loss` predict -eps and are divided by s(t) to give a score
(Song et al. 2021, App. H), or, with the EDM preconditioning (`edm_preconditioning`, Karras et al.
2022, Table 1), a mix of skip connection and network that is the denoiser; samplers such as DDIM
and DPM-Solver++ work with eps or x0.
All functions take `t` of shape (B,) and return tensors like `x`.
"""
from __future__ import annotations

import torch

from .sdes import SDE
from .utils import append_dims


def _coeffs(sde: SDE, t: torch.Tensor, x: torch.Tensor):
    a, s = sde.marginal_coeffs(t)
    return append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)


def eps_from_score(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """eps_hat = -s(t) score."""
    _, s = _coeffs(sde, t, x)
    return -s * score


def x0_from_score(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Tweedie: E[x_0 | x_t] = (x_t + s(t)^2 score) / a(t)."""
    a, s = _coeffs(sde, t, x)
    return (x + s ** 2 * score) / a


def edm_preconditioning(sde: SDE, t: torch.Tensor, sigma_data: float):
    """The EDM preconditioning (Karras et al. 2022, Table 1 and App. B.6) for any affine SDE.

    In the scaled variable x~ = x_t / a(t) = x_0 + sigma z, sigma = s(t) / a(t) (Karras et al.'s
    x = s(t) x~, eq. 4 / App. C), the denoiser is D(x~; sigma) = c_skip x~ + c_out F(c_in x~; c_noise):

        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in   = 1 / sqrt(sigma^2 + sigma_data^2),          c_noise = ln(sigma) / 4,

    chosen so that the network's input c_in x~ and its training target (x_0 - c_skip x~) / c_out
    have unit variance for data of variance sigma_data^2. For the EDM SDE (a = 1, s = t) this is
    the paper's table exactly.

    Args:
        sde: the forward SDE. t: times, shape (B,). sigma_data: the data's standard deviation.

    Returns:
        `(a, sigma, c_skip, c_out, c_in, c_noise)`, each shaped like `t` in t's dtype (at least float32).
    """
    a, s = sde.marginal_coeffs(t)
    sigma = s / a
    norm2 = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / norm2
    c_out = sigma * sigma_data * torch.rsqrt(norm2)
    c_in = torch.rsqrt(norm2)
    c_noise = 0.25 * torch.log(sigma)
    return a, sigma, c_skip, c_out, c_in, c_noise
