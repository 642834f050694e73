"""Noise-conditional classifiers p_phi(y | x_t, t) for classifier guidance.

Song et al. 2021, Sec. 5 and App. I.1 (a time-dependent classifier trained on perturbed data);
Dhariwal & Nichol 2021, Sec. 4 (the encoder half of the U-Net with a pooling head). The guided
score of class y is grad log p_t(x) + w grad_x log p_phi(y | x, t).

Both backbones use the score networks' own parts, so a classifier sees time exactly as the score
model does: the Gaussian Fourier features and MLP of `TimeEmbedding` (without a label), the
residual blocks of `mlp.py` (vectors) or the residual and attention blocks of `unet.py` (images).
`NoiseConditionalClassifier` scales the input by c_in(t) like `ScoreModel`, so the backbone sees
unit-variance inputs at every t and for every SDE.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .._validation import check_positive, check_positive_int
from ..sdes import SDE
from ..utils import append_dims
from .fourier import TimeEmbedding
from .mlp import _Block
from .unet import _Attention, _check_options, _encoder, _groups, _ResBlock

__all__ = ["MLPClassifier", "UNetClassifier", "NoiseConditionalClassifier"]


class MLPClassifier(nn.Module):
    """Time-conditional residual MLP classifier: x (B, *event), t (B,) -> logits (B, num_classes).

    Args:
        dim: number of data dimensions (the product of the event shape).
        num_classes: C, the number of classes.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        time_embed_dim: width of the time embedding.
        fourier_scale: scale of the Gaussian Fourier time features.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, depth: int = 3, time_embed_dim: int = 64,
                 fourier_scale: float = 16.0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        hidden = check_positive_int("hidden", hidden)
        depth = check_positive_int("depth", depth)
        self.embed = TimeEmbedding(check_positive_int("time_embed_dim", time_embed_dim), fourier_scale)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, time_embed_dim) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, self.num_classes))

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: x (B, *event), t (B,) -> (B, hidden), the input of the last linear."""
        if x[0].numel() != self.dim:
            raise ValueError(f"x must have {self.dim} values per sample; got shape {tuple(x.shape)}")
        emb = self.embed(t.to(x.dtype))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.head[:-1](h)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, *event) with prod(event) == dim, t: (B,) -> (B, num_classes) logits."""
        return self.head[-1](self.features(x, t))


class UNetClassifier(nn.Module):
    """The encoder half of `UNet` with a pooling head: (B, C, H, W), t (B,) -> logits (B, num_classes).

    conv_in, then per resolution level `num_res_blocks` residual blocks (self-attention at the
    sizes in `attention_resolutions`) and a strided-conv down-sampling, a middle residual +
    attention block, then GroupNorm -> SiLU -> global average pooling -> linear
    (Dhariwal & Nichol 2021, App. C, "adaptive pooling" head without the attention pool).

    Args:
        in_channels: image channels C.
        image_size: H = W of the input (divisible by 2^(len(channel_mult) - 1)).
        num_classes: number of classes.
        channels, channel_mult, num_res_blocks, attention_resolutions, dropout, time_embed_dim,
        fourier_scale: as for `UNet`.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        dropout: float = 0.0,
        time_embed_dim: Optional[int] = None,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        self.in_channels, channels, num_res_blocks, self.image_size, channel_mult = _check_options(
            in_channels, channels, num_res_blocks, image_size, channel_mult, dropout)
        self.num_classes = check_positive_int("num_classes", num_classes)
        attn = set(attention_resolutions)
        embed_dim = 4 * channels if time_embed_dim is None else check_positive_int("time_embed_dim", time_embed_dim)
        self.embed = TimeEmbedding(embed_dim, fourier_scale)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        # the U-Net's own encoder: [block] or [block, attention] stages, a down-sampling conv between levels
        self.stages, _, ch, _ = _encoder(channels, channel_mult, num_res_blocks, attn, embed_dim, dropout, self.image_size)
        self.mid_block, self.mid_attn = _ResBlock(ch, ch, embed_dim, dropout), _Attention(ch)
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.head = nn.Linear(ch, self.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) -> (B, num_classes) logits."""
        return self.head(self.features(x, t))

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: x (B, C, H, W), t (B,) -> (B, channels) pooled activations."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, {self.image_size}, {self.image_size}); got {tuple(x.shape)}"
            )
        emb = self.embed(t.to(x.dtype))
        h = self.conv_in(x)
        for stage in self.stages:
            if isinstance(stage[0], _ResBlock):
                h = stage[0](h, emb)
                for extra in stage[1:]:
                    h = extra(h)
            else:
                h = stage[0](h)
        h = self.mid_attn(self.mid_block(h, emb))
        return nn.functional.silu(self.norm_out(h)).mean(dim=(-2, -1))


class NoiseConditionalClassifier(nn.Module):
    """Wrap a classifier backbone into `classifier(x, t) -> logits of p(y | x_t = x)`.

    The input is scaled like `ScoreModel`'s, c_in(t) = 1 / sqrt(a(t)^2 sigma_data^2 + s(t)^2)
    (Karras et al. 2022, Table 1), so the backbone sees unit-variance inputs at every t.

    Args:
        backbone: module with `backbone(x, t)` -> (B, C) logits and an attribute `num_classes`.
        sde: the forward SDE (its marginal coefficients give c_in).
        data_std: sigma_data of the input scaling.
    """

    def __init__(self, backbone: nn.Module, sde: SDE, data_std: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.sde = sde
        self.data_std = check_positive("data_std", data_std)
        self.num_classes = check_positive_int("backbone.num_classes", getattr(backbone, "num_classes", None))

    def _c_in(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.sde.marginal_coeffs(t)
        a, s = append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)
        return torch.rsqrt(a ** 2 * self.data_std ** 2 + s ** 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, *event), t: (B,) -> (B, num_classes) logits in x's dtype."""
        return self.backbone(self._c_in(x, t) * x, t.to(x.dtype))

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The backbone's penultimate layer on the scaled input, (B, F); needs `backbone.features`."""
        if not callable(getattr(self.backbone, "features", None)):
            raise ValueError(
                f"backbone must have a features(x, t) method (MLPClassifier, UNetClassifier); "
                f"got {type(self.backbone).__name__}"
            )
        return self.backbone.features(self._c_in(x, t) * x, t.to(x.dtype))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_phi(y | x_t = x) for every class, (B, num_classes)."""
        return torch.log_softmax(self(x, t), dim=-1)
