"""Score MLP for vector data (2-D toys, Gaussian mixtures).

A residual MLP conditioned on time (and optionally a class label) by adding the time embedding
to every hidden layer. Its raw output is the noise prediction -z (see `score_model.ScoreModel`,
which divides by s(t)).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validation import check_positive_int
from .fourier import TimeEmbedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, hidden: int, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.lin1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(embed_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.act(self.lin1(self.norm(h)) + self.emb(emb))
        return h + self.lin2(r)


class MLP(nn.Module):
    """Time-conditional residual MLP: (B, *event) -> (B, *event).

    Args:
        dim: number of data dimensions (the product of the event shape).
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        time_embed_dim: width of the time embedding.
        fourier_scale: scale of the Gaussian Fourier time features.
        num_classes: classes for a conditional model (None: unconditional).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_embed_dim: int = 128,
        fourier_scale: float = 16.0,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        hidden = check_positive_int("hidden", hidden)
        depth = check_positive_int("depth", depth)
        self.embed = TimeEmbedding(check_positive_int("time_embed_dim", time_embed_dim), fourier_scale, num_classes)
        self.num_classes = self.embed.num_classes  # None: unconditional; label num_classes = no label
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, time_embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, *event) with prod(event) == dim, t: (B,), y: (B,) labels or None."""
        shape = x.shape
        if x[0].numel() != self.dim:
            raise ValueError(f"x must have {self.dim} values per sample; got shape {tuple(shape)}")
        emb = self.embed(t.to(x.dtype), y)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(shape)
