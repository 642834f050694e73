"""Exact categorical oracle: a mixture of product-categorical laws over L positions and K categories.

    p_0(x) = sum_c w_c prod_l pi_{c,l}(x^l)

Every D3PM forward process acts position-wise and linearly on the laws, so the noised marginal is a
mixture of the same form (the discrete analogue of a Gaussian mixture under an affine SDE):

    q_t(x) = sum_c w_c prod_l (pi_{c,l} Qbar_t)(x^l)                              (D3PM eq. 2 per component)

and the exact denoising posterior is component responsibilities times per-position Bayes:

    r_c(x_t) = softmax_c( log w_c + sum_l log (pi_{c,l} Qbar_t)(x_t^l) )
    p(x_0^l = k | x_t) = sum_c r_c(x_t) pi_{c,l}(k) [Qbar_t]_{k, x_t^l} / (pi_{c,l} Qbar_t)(x_t^l)

`denoiser(process)` returns it as log-probabilities, the exact `model(x_t, t)` of the samplers and the
loss. Everything is in float64 on the device of the inputs.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from .._validation import check_choice, check_positive_int
from .processes import DiscreteProcess, check_tokens

__all__ = ["CategoricalMixture", "CATEGORICAL_PRESETS", "make_categorical_preset", "HIDDEN_PRESET"]


class CategoricalMixture(nn.Module):
    """p(x) = sum_c w_c prod_l Cat(x^l; probs[c, l]) over x in {0..K-1}^L.

    Args:
        weights: (C,) non-negative mixture weights (normalised here).
        probs: (C, L, K) non-negative per-position probabilities (each row normalised here; zeros allowed).
    """

    def __init__(self, weights, probs):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64)
        p = torch.as_tensor(probs, dtype=torch.float64)
        if w.ndim != 1 or p.ndim != 3 or p.shape[0] != w.shape[0]:
            raise ValueError(f"weights must be (C,) and probs (C, L, K) with the same C; got {tuple(w.shape)} and {tuple(p.shape)}")
        if not (torch.isfinite(w).all() and torch.isfinite(p).all()) or (w < 0).any() or (p < 0).any():
            raise ValueError("weights and probs must be finite and >= 0")
        if w.sum() <= 0 or (p.sum(-1) <= 0).any():
            raise ValueError("weights and every row of probs must have a positive sum")
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("probs", p / p.sum(-1, keepdim=True))

    @property
    def num_components(self) -> int:
        return self.probs.shape[0]

    @property
    def num_positions(self) -> int:
        return self.probs.shape[1]

    @property
    def num_classes(self) -> int:
        return self.probs.shape[2]

    # ---- the law ----
    def component_log_likelihood(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """(n, C): log prod_l probs[c, l, x^l] for x (n, L) long ids (unchecked; `probs` (C, L, S))."""
        n, L = x.shape
        C, _, S = probs.shape
        logp = probs.to(x.device).log()  # (C, L, S)
        picked = torch.gather(logp[None].expand(n, C, L, S), 3, x[:, None, :, None].expand(n, C, L, 1))
        return picked[..., 0].sum(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x (n, L) long ids: (n,) float64."""
        x = check_tokens(x, self.num_classes, "x")
        return torch.logsumexp(self.weights.to(x.device).log() + self.component_log_likelihood(x, self.probs), dim=1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None, return_labels: bool = False):
        """n exact draws: (n, L) long (and the (n,) component labels)."""
        n = check_positive_int("n", n)
        if device is None:
            device = generator.device if generator is not None else self.weights.device
        labels = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        rows = self.probs.to(device)[labels]  # (n, L, K)
        x = torch.multinomial(rows.reshape(-1, self.num_classes), 1, generator=generator).reshape(n, self.num_positions)
        return (x, labels) if return_labels else x

    def enumerate(self) -> torch.Tensor:
        """All K^L states (K^L, L) long in lexicographic order (small L and K only)."""
        K, L = self.num_classes, self.num_positions
        if K ** L > 2_000_000:
            raise ValueError(f"enumerate needs K^L <= 2e6 states; got K={K}, L={L}")
        grids = torch.cartesian_prod(*[torch.arange(K, device=self.weights.device)] * L)
        return grids.reshape(-1, L)

    def marginals(self) -> torch.Tensor:
        """(L, K) per-position marginals sum_c w_c probs[c, l]."""
        return torch.einsum("c,clk->lk", self.weights, self.probs)

    # ---- the noised law and the exact posterior ----
    def noised(self, process: DiscreteProcess, t: int) -> "CategoricalMixture":
        """q_t as a mixture over the process's S states (exact for every t in [0, T])."""
        self._check_process(process)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= process.T:
            raise ValueError(f"t must be an integer step in [0, T = {process.T}]; got {t!r}")
        Qbar = process.cumulative_matrix(torch.tensor([t], device=process.betas.device))[0][: self.num_classes]
        return CategoricalMixture(self.weights, self.probs.to(Qbar.device) @ Qbar)

    def _check_process(self, process: DiscreteProcess) -> None:
        if process.num_classes != self.num_classes:
            raise ValueError(f"process.num_classes must equal the oracle's K = {self.num_classes}; got {process.num_classes}")

    def component_log_posterior(self, x_t: torch.Tensor, t: torch.Tensor, process: DiscreteProcess) -> torch.Tensor:
        """log r_c(x_t) for x_t (B, L) and t (B,): (B, C) float64."""
        return self._posterior(check_tokens(x_t, process.num_states, "x_t"), t, process)[1]

    def _posterior(self, x_t: torch.Tensor, t: torch.Tensor, process: DiscreteProcess):
        self._check_process(process)
        B, L = x_t.shape
        K, C = self.num_classes, self.num_components
        Qbar = process.cumulative_matrix(t)[:, :K, :]  # (B, K, S)
        S = Qbar.shape[-1]
        col = torch.gather(Qbar, 2, x_t[:, None, :].expand(B, K, L)).transpose(1, 2)  # (B, L, K): Qbar[k, x_t^l]
        joint = self.probs.to(x_t.device)[None] * col[:, None]  # (B, C, L, K): pi_{c,l}(k) Qbar[k, x_t^l]
        lik = joint.sum(-1)  # (B, C, L): (pi_{c,l} Qbar_t)(x_t^l)
        log_r = self.weights.to(x_t.device).log()[None] + lik.log().sum(-1)
        log_r = log_r - torch.logsumexp(log_r, dim=1, keepdim=True)
        per_pos = joint / lik.clamp_min(1e-300)[..., None]
        x0 = torch.einsum("bc,bclk->blk", log_r.exp(), per_pos)
        return x0.clamp_min(0).log(), log_r

    def x0_log_probs(self, x_t: torch.Tensor, t: torch.Tensor, process: DiscreteProcess) -> torch.Tensor:
        """Exact log p(x_0^l = k | x_t) for x_t (B, L) long in [0, S), t (B,) in [0, T]: (B, L, K)."""
        x_t = check_tokens(x_t, process.num_states, "x_t")
        return self._posterior(x_t, t, process)[0]

    def denoiser(self, process: DiscreteProcess) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact model `model(x_t, t) -> log p(x_0 | x_t)` (B, L, K) for `process`."""
        self._check_process(process)

        def exact_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._posterior(x_t, t, process)[0]

        return exact_x0

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, L={self.num_positions}, K={self.num_classes}"


def _random_mixture(seed: int, C: int, L: int, K: int, concentration: float) -> CategoricalMixture:
    """C components of L rows over K levels, row ~ E^(1 / concentration) normalised (E exponential):
    small `concentration` gives sharp rows; weights uniform on [0.5, 1.5] before normalising."""
    g = torch.Generator().manual_seed(seed)
    e = -torch.rand(C, L, K, generator=g, dtype=torch.float64).log()  # Gamma(1) draws
    rows = e.pow(1.0 / concentration)
    w = 0.5 + torch.rand(C, generator=g, dtype=torch.float64)
    return CategoricalMixture(w, rows / rows.sum(-1, keepdim=True))


def _tiny() -> CategoricalMixture:
    """L = 2, K = 3, two components: small enough to enumerate (9 states), correlated positions."""
    probs = [[[0.8, 0.15, 0.05], [0.7, 0.2, 0.1]], [[0.05, 0.15, 0.8], [0.1, 0.1, 0.8]]]
    return CategoricalMixture([0.6, 0.4], probs)


def _small4() -> CategoricalMixture:
    """L = 4, K = 4, three components: 256 states (exact TV on all of them)."""
    return _random_mixture(11, C=3, L=4, K=4, concentration=0.3)


def _seq16() -> CategoricalMixture:
    """L = 16, K = 8, four sharp components: per-position marginals and mode weights."""
    return _random_mixture(12, C=4, L=16, K=8, concentration=0.2)


def _ordinal32() -> CategoricalMixture:
    """L = 32, K = 17 ordinal levels: three smooth 'images' (discretised bumps) with level noise."""
    L, K = 32, 17
    pos = torch.arange(L, dtype=torch.float64)
    levels = torch.arange(K, dtype=torch.float64)
    probs = []
    for centre, width in [(8.0, 3.0), (16.0, 6.0), (25.0, 2.0)]:
        mean = 16 * torch.exp(-0.5 * ((pos - centre) / width) ** 2)  # (L,) level profile in [0, 16]
        probs.append(torch.exp(-0.5 * ((levels[None] - mean[:, None]) / 1.5) ** 2))
    return CategoricalMixture([0.5, 0.3, 0.2], torch.stack(probs))


def _hidden() -> CategoricalMixture:
    """Not tuned on: drawn once from seed 2026, L = 24, K = 6, five components."""
    return _random_mixture(2026, C=5, L=24, K=6, concentration=0.25)


#: preset name -> constructor
CATEGORICAL_PRESETS: Dict[str, Callable[[], CategoricalMixture]] = {
    "tiny": _tiny,
    "small4": _small4,
    "seq16": _seq16,
    "ordinal32": _ordinal32,
    "hidden": _hidden,
}

#: the preset the samplers were not tuned on (reported separately by the benchmark)
HIDDEN_PRESET = "hidden"


def make_categorical_preset(name: str) -> CategoricalMixture:
    """Build a named categorical oracle: one of `CATEGORICAL_PRESETS`."""
    check_choice("preset", name, CATEGORICAL_PRESETS)
    return CATEGORICAL_PRESETS[name]()
