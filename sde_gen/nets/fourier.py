"""Time conditioning: Gaussian Fourier features followed by a small MLP.

Gaussian Fourier features (Tancik et al. 2020; used for time in Song et al. 2021, App. H.1):

    omega ~ N(0, s^2 I)  (fixed, not trained),    gamma(t) = [sin(2 pi omega t), cos(2 pi omega t)].

The frequencies are drawn once from a dedicated, seeded generator so that the same config gives
the same features on every machine, and they live in a buffer (saved in checkpoints, moved by
`.to(device)`, never touched by the optimiser).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_positive, check_positive_int

__all__ = ["GaussianFourierFeatures", "TimeEmbedding"]


class GaussianFourierFeatures(nn.Module):
    """gamma(t) = [sin(2 pi omega t), cos(2 pi omega t)] with frozen omega ~ N(0, scale^2 I).

    Args:
        embed_dim: output width (even); embed_dim / 2 frequencies.
        scale: standard deviation s of the frequencies.
        seed: seed of the generator that draws omega.
    """

    def __init__(self, embed_dim: int = 128, scale: float = 16.0, seed: int = 0):
        super().__init__()
        embed_dim = check_positive_int("embed_dim", embed_dim)
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin and cos halves); got {embed_dim}")
        self.scale = check_positive("scale", scale)
        g = torch.Generator().manual_seed(int(seed))
        # drawn on the CPU whatever the default device (the same omega everywhere; `.to` moves it)
        self.register_buffer("omega", torch.randn(embed_dim // 2, generator=g, device="cpu") * self.scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> (B, embed_dim) in t's dtype."""
        proj = 2 * math.pi * t[:, None] * self.omega.to(t.dtype)[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class TimeEmbedding(nn.Module):
    """Fourier features -> Linear -> SiLU -> Linear, plus an optional class-label embedding.

    Args:
        embed_dim: width of the features and of the output embedding.
        fourier_scale: frequency scale of the Fourier features.
        num_classes: number of classes for conditional models (None: unconditional). The label
            index `num_classes` is the "no label" token (used for classifier-free guidance).
    """

    def __init__(self, embed_dim: int = 128, fourier_scale: float = 16.0, num_classes: int | None = None):
        super().__init__()
        self.fourier = GaussianFourierFeatures(embed_dim, fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.num_classes = None if num_classes is None else check_positive_int("num_classes", num_classes)
        # one extra row: the "no label" token
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, embed_dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """t: (B,), y: (B,) long labels in [0, num_classes] or None -> (B, embed_dim)."""
        emb = self.mlp(self.fourier(t))
        if self.label is not None:
            if y is None:  # unconditional call of a conditional model: the "no label" token
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.label(y)
        return emb
