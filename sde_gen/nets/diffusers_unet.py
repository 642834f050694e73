"""diffusers' `UNet2DModel` (Ho et al. 2020's DDPM U-Net) as a score backbone (`model=diffusers_unet`).

`ScoreModel` needs a backbone F(x, t, y) that predicts -z, the negated noise (Song et al. 2021,
App. H). The wrapped UNet2DModel keeps diffusers' meaning, a noise prediction eps_hat on timesteps:

    F(x, t, y) = -UNet2DModel(x, tau = time_scale * t, class_labels=y).sample,

with tau = 999 t by default (Song et al.'s convention for continuous-time VP models: t in [0, 1]
spans the 1,000 DDPM timesteps). The optional `diffusers` package (`pip install 'sde_gen[interop]'`)
is imported when the backbone is built, so the registry entry costs nothing without it.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

import torch
from torch import nn

from .._validation import check_positive, check_positive_int

__all__ = ["DiffusersUNet"]


class DiffusersUNet(nn.Module):
    """diffusers' `UNet2DModel` as a backbone: (B, C, H, W) -> (B, C, H, W), the -noise prediction.

    Args:
        in_channels: image channels C (from the data).
        image_size: H = W (from the data; divisible by 2^(levels - 1)).
        block_out_channels: width per resolution level (each divisible by `norm_num_groups`).
        layers_per_block: ResNet blocks per level.
        attention: self-attention in the lowest-resolution level.
        norm_num_groups: groups of the GroupNorm layers.
        attention_head_dim: width of one attention head.
        num_classes: classes for a conditional model (label `num_classes` = no label), None: unconditional.
        time_scale: the UNet's timestep is time_scale * t.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int = 8,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        attention: bool = True,
        norm_num_groups: int = 8,
        attention_head_dim: int = 8,
        num_classes: Optional[int] = None,
        time_scale: float = 999.0,
    ):
        super().__init__()
        try:
            diffusers = importlib.import_module("diffusers")
        except ImportError as err:
            # no chained cause: the config layer reports the innermost error, which should be this one
            raise ImportError(f"model=diffusers_unet needs diffusers: pip install 'sde_gen[interop]' ({err})",
                              name="diffusers") from None
        widths = [check_positive_int("block_out_channels", c) for c in block_out_channels]
        groups = check_positive_int("norm_num_groups", norm_num_groups)
        if not widths or any(c % groups for c in widths):
            raise ValueError(f"block_out_channels must be a non-empty list of multiples of norm_num_groups={groups}; "
                             f"got {list(block_out_channels)!r}")
        image_size = check_positive_int("image_size", image_size)
        if image_size % 2 ** (len(widths) - 1):
            raise ValueError(f"image_size must be divisible by 2^(levels - 1) = {2 ** (len(widths) - 1)}; got {image_size}")
        self.num_classes = None if num_classes is None else check_positive_int("num_classes", num_classes)
        self.time_scale = check_positive("time_scale", time_scale)
        last = "AttnDownBlock2D" if attention else "DownBlock2D"
        down = ("DownBlock2D",) * (len(widths) - 1) + (last,)
        up = (last.replace("Down", "Up"),) + ("UpBlock2D",) * (len(widths) - 1)
        self.unet = diffusers.UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=in_channels, block_out_channels=tuple(widths),
            layers_per_block=check_positive_int("layers_per_block", layers_per_block), down_block_types=down,
            up_block_types=up, norm_num_groups=groups, attention_head_dim=check_positive_int("attention_head_dim", attention_head_dim),
            num_class_embeds=None if self.num_classes is None else self.num_classes + 1,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,), y: (B,) labels or None -> -eps_hat (B, C, H, W)."""
        labels = None
        if self.num_classes is not None:
            labels = y if y is not None else torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return -self.unet(x, self.time_scale * t, class_labels=labels).sample
