"""A small U-Net for images, in the spirit of DDPM / DDPM++ (Ho et al. 2020; Song et al. 2021,
App. H) but sized to train on a CPU for 8x8 and 28x28 images.

Residual blocks GroupNorm -> SiLU -> conv, with the time (and label) embedding added after the
first convolution; strided-conv down-sampling, nearest-neighbour up-sampling; single-head
self-attention at the resolutions listed in `attention_resolutions`; skip connections from every
encoder stage to the decoder. The last convolution starts at zero, so an untrained model predicts
zero noise (score 0), a stable start (Song et al. 2021, NCSN++ "init_scale=0").
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .._validation import check_nonnegative, check_positive_int
from .fourier import TimeEmbedding

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    """The largest number of GroupNorm groups <= 8 that divides `channels`."""
    return max(g for g in range(1, 9) if channels % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, embed_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(embed_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return (self.skip(x) + h) / math.sqrt(2.0)  # keep the variance of the residual sum ~1


class _Attention(nn.Module):
    """Single-head self-attention over the H*W positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        h = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))) / math.sqrt(2.0)


def _check_options(in_channels, channels, num_res_blocks, image_size, channel_mult, dropout):
    """The U-Net's shape options, checked (shared by `UNet` and the classifier built on its encoder).

    Returns:
        (in_channels, channels, num_res_blocks, image_size, channel_mult as a tuple).
    """
    in_channels = check_positive_int("in_channels", in_channels)
    channels = check_positive_int("channels", channels)
    num_res_blocks = check_positive_int("num_res_blocks", num_res_blocks)
    image_size = check_positive_int("image_size", image_size)
    check_nonnegative("dropout", dropout)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
    channel_mult = tuple(channel_mult)
    if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty list of integers >= 1; got {list(channel_mult)}")
    levels = len(channel_mult)
    if image_size % 2 ** (levels - 1):
        raise ValueError(
            f"image_size must be divisible by 2^(len(channel_mult) - 1) = {2 ** (levels - 1)}; got {image_size}"
        )
    return in_channels, channels, num_res_blocks, image_size, channel_mult


def _encoder(channels, channel_mult, num_res_blocks, attn, embed_dim, dropout, image_size):
    """The U-Net encoder: per level `num_res_blocks` residual stages (each [block] or [block, attention])
    and a stride-2 convolution between levels.

    Returns:
        (stages, skip channels (the width after conv_in and after every stage), final width, final size).
    """
    stages = nn.ModuleList()
    skip_ch, ch, res = [channels], channels, image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            stages.append(nn.ModuleList([_ResBlock(ch, channels * mult, embed_dim, dropout)]))
            ch = channels * mult
            if res in attn:
                stages[-1].append(_Attention(ch))
            skip_ch.append(ch)
        if level != len(channel_mult) - 1:
            stages.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
            skip_ch.append(ch)
            res //= 2
    return stages, skip_ch, ch, res


class UNet(nn.Module):
    """Time-conditional U-Net: (B, C, H, W) -> (B, C, H, W).

    Args:
        in_channels: image channels C.
        channels: base width.
        channel_mult: width multiplier per resolution level; len(channel_mult) - 1 down-samplings.
        num_res_blocks: residual blocks per level in the encoder (one more in the decoder).
        attention_resolutions: spatial sizes at which self-attention is applied.
        image_size: H = W of the input (must be divisible by 2^(levels - 1)).
        num_classes: classes for a conditional model (None: unconditional).
        dropout: dropout rate inside the residual blocks.
        time_embed_dim: width of the time embedding (None: 4 * channels).
        fourier_scale: scale of the Gaussian Fourier time features.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        image_size: int = 8,
        num_classes: Optional[int] = None,
        dropout: float = 0.0,
        time_embed_dim: Optional[int] = None,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        in_channels, channels, num_res_blocks, image_size, channel_mult = _check_options(
            in_channels, channels, num_res_blocks, image_size, channel_mult, dropout)
        attn = set(attention_resolutions)
        embed_dim = 4 * channels if time_embed_dim is None else check_positive_int("time_embed_dim", time_embed_dim)
        self.embed = TimeEmbedding(embed_dim, fourier_scale, num_classes)
        self.num_classes = self.embed.num_classes  # None: unconditional; label num_classes = no label
        self.in_channels, self.image_size = in_channels, image_size
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down, skip_ch, ch, res = _encoder(channels, channel_mult, num_res_blocks, attn, embed_dim, dropout, image_size)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, embed_dim, dropout), _Attention(ch), _ResBlock(ch, ch, embed_dim, dropout)])

        # decoder
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([_ResBlock(ch + skip_ch.pop(), channels * mult, embed_dim, dropout)]))
                ch = channels * mult
                if res in attn:
                    self.up[-1].append(_Attention(ch))
            if level != 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,), y: (B,) labels or None."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, {self.image_size}, {self.image_size}); got {tuple(x.shape)}"
            )
        emb = self.embed(t.to(x.dtype), y)
        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            if isinstance(stage[0], _ResBlock):
                h = stage[0](h, emb)
                for extra in stage[1:]:
                    h = extra(h)
            else:
                h = stage[0](h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for stage in self.up:
            if isinstance(stage[0], _ResBlock):
                h = stage[0](torch.cat([h, hs.pop()], dim=1), emb)
                for extra in stage[1:]:
                    h = extra(h)
            else:
                h = stage[1](stage[0](h))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))
