"""The DDPM++ U-Net (Song et al. 2021, App. H; after Ho et al. 2020, App. B), FIR-free.

    F(x, t, y):  conv_in -> encoder [ResBlock (+ attention)] x num_res_blocks per level, down-sampling
                 between levels -> middle (ResBlock, attention, ResBlock) -> decoder
                 [ResBlock(concat skip)] x (num_res_blocks + 1) per level (+ attention once per level),
                 up-sampling between levels -> GroupNorm -> SiLU -> conv_out.

Residual block (Ho et al. 2020; "BigGAN" form of Song et al. 2021, App. H.1):

    h = conv_0(resample(SiLU(GN(x)))) + Dense(SiLU(emb)),   h = conv_1(dropout(SiLU(GN(h)))),
    out = (skip(resample(x)) + h) / sqrt(2)        (skip rescaling, Song et al. 2021, App. H.1)

with skip a 1x1 convolution when the width changes or the block resamples. Self-attention is
single- or multi-head dot-product attention over the H*W positions with a residual connection,
rescaled by 1/sqrt(2) as well. The time embedding is sinusoidal ("positional", Vaswani et al. 2017,
as in DDPM) of `time_scale * t`, or Gaussian Fourier features of `time_scale * t` (Tancik et al.
2020; NCSN++), followed by Linear -> SiLU -> Linear to width 4 * channels; a class label adds a
learnt embedding (label `num_classes` is the "no label" token of classifier-free guidance).
GroupNorm has min(32, C / 4) groups (both reference codes). The last convolution of every residual
branch and of every attention block, and the output convolution, start at zero (score_sde's
init_scale = 0), so an untrained network predicts 0 and every block starts as the identity (up to
the 1/sqrt(2) rescaling); every other weight is Glorot-uniform with zero bias (fan-average
variance scaling, score_sde's default_init).

Down/up-sampling (`resample`), the options of score_sde_pytorch (`resblock_type`, `resamp_with_conv`,
`fir=False`) and of EDM's SongUNet (`resample_filter=[1, 1]`, `resample_proj=True`) that need no FIR
filter:

* "resblock": a residual block that resamples: 2x2 average pooling / nearest-neighbour up-sampling of
  both branches, 1x1 projection on the skip (score_sde `resblock_type="biggan"`, `fir=False`; EDM's
  DDPM++ `resample_filter=[1, 1]`, whose 2x2 box filter is exactly average pooling and whose
  transposed box filter is exactly nearest-neighbour up-sampling);
* "conv": a separate stride-2 3x3 convolution down / nearest-neighbour then 3x3 convolution up
  (score_sde `resblock_type="ddpm"`, `resamp_with_conv=True`; Ho et al. 2020);
* "pool": a separate 2x2 average pooling down / nearest-neighbour up, no weights
  (`resamp_with_conv=False`).

Not supported: the FIR filters ([1, 3, 3, 1], NCSN++ `fir=True`), progressive input/output branches
(`progressive`, `progressive_input`; EDM's `encoder_type="residual"`, `decoder_type="skip"`), and
the "scale_by_sigma" output (in this library the output scaling is `ScoreModel`'s, see
`sde_gen.nets.score_model`).

`channels_last=True` stores the convolution weights in the channels-last memory format and runs the
network on channels-last activations (faster convolutions on GPUs with tensor cores); the output
is returned in the standard contiguous layout, so callers never see the difference.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_choice, check_nonnegative, check_positive, check_positive_int
from .fourier import GaussianFourierFeatures

__all__ = ["DDPMpp", "RESAMPLE", "EMBEDDINGS", "group_count", "positional_embedding"]

#: the down/up-sampling options (module docstring)
RESAMPLE = ("resblock", "conv", "pool")
#: the time embeddings
EMBEDDINGS = ("positional", "fourier")


def group_count(channels: int) -> int:
    """GroupNorm groups for `channels`: min(32, channels // 4) (score_sde and EDM), lowered to the
    nearest divisor of `channels` (at least 1) for widths those codes never use."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def positional_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (Vaswani et al. 2017, Sec. 3.5; DDPM's time embedding).

    Args:
        t: (B,) times (any scale; DDPM feeds step indices 0..999).
        dim: output width (even).

    Returns:
        (B, dim): [sin(t w_k), cos(t w_k)] with w_k = max_period^(-k / (dim/2 - 1)), k = 0..dim/2-1.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    w = torch.exp(-math.log(max_period) * k / max(half - 1, 1)).to(t.dtype)
    arg = t[:, None] * w[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _glorot(module: nn.Module, zero: bool = False) -> nn.Module:
    """Glorot-uniform weight (or zeros) and zero bias (score_sde's default_init / init_scale = 0)."""
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    return _glorot(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), zero)


def _resample(x: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    if direction == "down":
        return F.avg_pool2d(x, 2)
    if direction == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """Residual block with time/label embedding; `direction` "down"/"up" resamples inside (BigGAN form).

    Args:
        cin, cout: input and output widths.
        embed_dim: width of the embedding.
        dropout: dropout rate before the second convolution.
        direction: None, "down" (2x2 average pooling) or "up" (nearest-neighbour).
        skip_rescale: divide the sum by sqrt(2).
    """

    def __init__(self, cin: int, cout: int, embed_dim: int, dropout: float, direction: Optional[str] = None,
                 skip_rescale: bool = True):
        super().__init__()
        self.direction, self.skip_rescale = direction, skip_rescale
        self.norm0 = nn.GroupNorm(group_count(cin), cin, eps=1e-6)
        self.conv0 = _conv(cin, cout)
        self.dense = _glorot(nn.Linear(embed_dim, cout))
        self.norm1 = nn.GroupNorm(group_count(cout), cout, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, zero=True)
        self.skip = _conv(cin, cout, 1) if (cin != cout or direction is not None) else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, cin, H, W), emb: (B, embed_dim) -> (B, cout, H', W')."""
        h = _resample(F.silu(self.norm0(x)), self.direction)
        x = _resample(x, self.direction)
        h = self.conv0(h) + self.dense(F.silu(emb))[:, :, None, None]
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual (Ho et al. 2020; Vaswani et al. 2017).

    Args:
        channels: width C (divisible by `num_heads`).
        num_heads: attention heads (score_sde's DDPM++: 1).
        skip_rescale: divide the residual sum by sqrt(2).
    """

    def __init__(self, channels: int, num_heads: int = 1, skip_rescale: bool = True):
        super().__init__()
        self.num_heads, self.skip_rescale = num_heads, skip_rescale
        self.norm = nn.GroupNorm(group_count(channels), channels, eps=1e-6)
        self.qkv = _conv(channels, 3 * channels, 1)
        self.proj = _conv(channels, channels, 1, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, C / heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        h = self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class _Resample(nn.Module):
    """A separate down/up-sampling layer: "conv" (with a 3x3 convolution) or "pool" (none)."""

    def __init__(self, channels: int, direction: str, with_conv: bool):
        super().__init__()
        self.direction = direction
        self.conv = None
        if with_conv:
            self.conv = _conv(channels, channels, 3, stride=2 if direction == "down" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.direction == "down":
            return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class DDPMpp(nn.Module):
    """The DDPM++ U-Net: (B, C, H, W), t (B,), y (B,) or None -> (B, C, H, W) (module docstring).

    Args:
        in_channels: image channels C (from the data).
        image_size: H = W (from the data); divisible by 2^(len(channel_mult) - 1).
        channels: base width (score_sde CIFAR-10: 128).
        channel_mult: width multiplier per resolution level (CIFAR-10: [1, 2, 2, 2]).
        num_res_blocks: residual blocks per level in the encoder; the decoder has one more (CIFAR-10: 4).
        attention_resolutions: resolutions (H of the feature map) with self-attention (CIFAR-10:
            [16]); each must be one of image_size / 2^i, i < len(channel_mult).
        dropout: dropout rate in the residual blocks (CIFAR-10: 0.1).
        num_classes: classes of a conditional model (None: unconditional).
        embedding: "positional" (DDPM++) or "fourier" (NCSN++) time features.
        time_scale: the features see time_scale * t (1000 maps t in [0, 1] to DDPM's step indices).
        fourier_scale: standard deviation of the Fourier frequencies ("fourier" only).
        resample: "resblock", "conv" or "pool" (module docstring).
        num_heads: attention heads.
        skip_rescale: divide every residual sum by sqrt(2).
        channels_last: channels-last weights and activations (module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: Optional[int] = None,
        embedding: str = "positional",
        time_scale: float = 1000.0,
        fourier_scale: float = 16.0,
        resample: str = "resblock",
        num_heads: int = 1,
        skip_rescale: bool = True,
        channels_last: bool = False,
    ):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        image_size = check_positive_int("image_size", image_size)
        channels = check_positive_int("channels", channels)
        if channels % 2:
            raise ValueError(f"channels must be even (the time features are sin/cos pairs); got {channels}")
        num_res_blocks = check_positive_int("num_res_blocks", num_res_blocks)
        num_heads = check_positive_int("num_heads", num_heads)
        check_nonnegative("dropout", dropout)
        if not dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
        channel_mult = list(channel_mult)
        if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of integers >= 1; got {channel_mult}")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image_size must be divisible by 2^(len(channel_mult) - 1) = {2 ** (len(channel_mult) - 1)}; "
                             f"got {image_size}")
        resolutions = [image_size // 2 ** i for i in range(len(channel_mult))]
        attention_resolutions = list(attention_resolutions)
        bad = [r for r in attention_resolutions if r not in resolutions]
        if bad:
            raise ValueError(f"attention_resolutions must be a subset of the U-Net's resolutions {resolutions} "
                             f"(image_size {image_size}, {len(channel_mult)} levels); got {attention_resolutions}")
        widths = {channels * m for m in channel_mult}
        if any(w % num_heads for w in widths):
            raise ValueError(f"num_heads must divide every level's width {sorted(widths)}; got {num_heads}")
        self.embedding = check_choice("embedding", embedding, EMBEDDINGS)
        self.resample = check_choice("resample", resample, RESAMPLE)
        self.time_scale = check_positive("time_scale", time_scale)
        if num_classes is not None:
            num_classes = check_positive_int("num_classes", num_classes)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.channels_last = bool(channels_last)

        # time (and label) embedding: features of width `channels` -> 4 * channels
        embed_dim = 4 * channels
        self.channels = channels
        self.fourier = GaussianFourierFeatures(channels, fourier_scale) if embedding == "fourier" else None
        self.embed = nn.Sequential(_glorot(nn.Linear(channels, embed_dim)), nn.SiLU(), _glorot(nn.Linear(embed_dim, embed_dim)))
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, embed_dim)

        def block(cin, cout, direction=None):
            return ResBlock(cin, cout, embed_dim, dropout, direction, skip_rescale)

        def attention(c):
            return Attention(c, num_heads, skip_rescale)

        def resampler(c, direction):
            return block(c, c, direction) if resample == "resblock" else _Resample(c, direction, resample == "conv")

        attn = set(attention_resolutions)
        self.conv_in = _conv(in_channels, channels)
        # encoder: each stage is [block] or [block, attention], or a resampler; every stage output is a skip
        self.down = nn.ModuleList()
        skips: List[int] = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                stage = nn.ModuleList([block(ch, channels * mult)])
                ch = channels * mult
                if resolutions[level] in attn:
                    stage.append(attention(ch))
                self.down.append(stage)
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([resampler(ch, "down")]))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch), attention(ch), block(ch, ch)])
        # decoder: num_res_blocks + 1 blocks per level, each eating one skip; attention once per level
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([block(ch + skips.pop(), channels * mult)]))
                ch = channels * mult
            if resolutions[level] in attn:
                self.up[-1].append(attention(ch))
            if level != 0:
                self.up.append(nn.ModuleList([resampler(ch, "up")]))
        assert not skips
        self.norm_out = nn.GroupNorm(group_count(ch), ch, eps=1e-6)
        self.conv_out = _conv(ch, in_channels, zero=True)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> (B, channels) features of time_scale * t."""
        s = t * self.time_scale
        return self.fourier(s) if self.fourier is not None else positional_embedding(s, self.channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,), y: (B,) long labels in [0, num_classes] or None -> (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"x must have shape (B, {self.in_channels}, {self.image_size}, {self.image_size}); "
                             f"got {tuple(x.shape)}")
        emb = self.embed(self.time_features(t.to(x.dtype)))
        if self.label is not None:
            if y is None:  # an unconditional call of a conditional model: the "no label" token
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label(y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage[0](h, emb) if isinstance(stage[0], ResBlock) else stage[0](h)
            for extra in stage[1:]:
                h = extra(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for stage in self.up:
            if isinstance(stage[0], ResBlock) and stage[0].direction is None:
                h = stage[0](torch.cat([h, hs.pop()], dim=1), emb)
            else:  # an up-sampler
                h = stage[0](h, emb) if isinstance(stage[0], ResBlock) else stage[0](h)
            for extra in stage[1:]:
                h = extra(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.contiguous() if self.channels_last else out
