"""The output parameterisation of a score network, in one place.

A backbone F(x, t, y) is trained to predict -z, the negated noise of x_t = a(t) x_0 + s(t) z, so

    s_theta(x, t) = F(c_in(t) x, t, y) / s(t)                   (Song et al. 2021, App. H),

which keeps the regression target at unit scale for every t. The input is rescaled by
c_in(t) = 1 / sqrt(a(t)^2 sigma_data^2 + s(t)^2) so that the network sees unit-variance inputs
for VE SDEs too (Karras et al. 2022, Table 1, "c_in"); this is a fixed function of t and does not
change what the model represents. Noise and data (Tweedie) predictions follow from the score
through `sde_gen.parameterization`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validation import check_positive
from ..parameterization import eps_from_score, x0_from_score
from ..sdes import SDE
from ..utils import append_dims

__all__ = ["ScoreModel"]


class ScoreModel(nn.Module):
    """Wrap a backbone into a score function `model(x, t, y=None) -> grad log p_t(x)`.

    Args:
        backbone: module with `backbone(x, t, y)` returning a tensor like x (the -noise prediction).
        sde: the forward SDE whose s(t) scales the output.
        data_std: sigma_data for the input scaling c_in(t).
    """

    def __init__(self, backbone: nn.Module, sde: SDE, data_std: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.sde = sde
        self.data_std = check_positive("data_std", data_std)

    @property
    def num_classes(self) -> Optional[int]:
        """C for a class-conditional backbone (labels 0..C-1, C = no label), None if unconditional."""
        return getattr(self.backbone, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, *event), t: (B,), y: (B,) labels or None -> score (B, *event)."""
        a, s = self.sde.marginal_coeffs(t)
        a, s = append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)
        c_in = torch.rsqrt(a ** 2 * self.data_std ** 2 + s ** 2)
        return self.backbone(c_in * x, t.to(x.dtype), y) / s

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The noise prediction eps_hat = -s(t) score."""
        return eps_from_score(self.sde, x, t, self(x, t, y))

    def x0(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The data prediction E[x_0 | x_t] by Tweedie's formula."""
        return x0_from_score(self.sde, x, t, self(x, t, y))
