"""The output parameterisation of a score network, in one place.

parameterization="score" (the default): a backbone F(x, t, y) is trained to predict -z, the negated
noise of x_t = a(t) x_0 + s(t) z, so

    s_theta(x, t) = F(c_in(t) x, t, y) / s(t)                   (Song et al. 2021, App. H),

which keeps the regression target at unit scale for every t. The input is rescaled by
c_in(t) = 1 / sqrt(a(t)^2 sigma_data^2 + s(t)^2) so that the network sees unit-variance inputs
for VE SDEs too (Karras et al. 2022, Table 1, "c_in"); this is a fixed function of t and does not
change what the model represents.

parameterization="edm": the full EDM preconditioning (Karras et al. 2022, Table 1), written in the
scaled variable x~ = x / a(t) with noise level sigma = s(t) / a(t) so that it serves every SDE:

    D(x~; sigma) = c_skip(sigma) x~ + c_out(sigma) F(c_in(sigma) x~, c_noise(sigma), y),
    s_theta(x, t) = a(t) (D - x~) / s(t)^2                      (Tweedie's formula, inverted),

with c_skip, c_out, c_in, c_noise from `sde_gen.parameterization.edm_preconditioning`; the backbone's
time input is c_noise = ln(sigma) / 4, not t. Noise and data (Tweedie) predictions follow from the
score through `sde_gen.parameterization`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validation import check_choice, check_positive
from ..parameterization import edm_preconditioning, eps_from_score, x0_from_score
from ..sdes import SDE
from ..utils import append_dims

__all__ = ["ScoreModel", "PARAMETERIZATIONS"]

#: the output parameterisations of `ScoreModel`
PARAMETERIZATIONS = ("score", "edm")


class ScoreModel(nn.Module):
    """Wrap a backbone into a score function `model(x, t, y=None) -> grad log p_t(x)`.

    Args:
        backbone: module with `backbone(x, t, y)` returning a tensor like x ("score": the -noise
            prediction; "edm": the preconditioned denoiser output F).
        sde: the forward SDE whose a(t), s(t) scale input and output.
        data_std: sigma_data, the data's standard deviation (c_in; for "edm" also c_skip, c_out).
        parameterization: "score" or "edm" (module docstring).
    """

    def __init__(self, backbone: nn.Module, sde: SDE, data_std: float = 1.0, parameterization: str = "score"):
        super().__init__()
        self.backbone = backbone
        self.sde = sde
        self.data_std = check_positive("data_std", data_std)
        self.parameterization = check_choice("parameterization", parameterization, PARAMETERIZATIONS)

    @property
    def num_classes(self) -> Optional[int]:
        """C for a class-conditional backbone (labels 0..C-1, C = no label), None if unconditional."""
        return getattr(self.backbone, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, *event), t: (B,), y: (B,) labels or None -> score (B, *event)."""
        if self.parameterization == "edm":
            return self._edm_score(x, t, y)
        a, s = self.sde.marginal_coeffs(t)
        a, s = append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)
        c_in = torch.rsqrt(a ** 2 * self.data_std ** 2 + s ** 2)
        return self.backbone(c_in * x, t.to(x.dtype), y) / s

    def _edm_score(self, x, t, y):
        a, sigma, c_skip, c_out, c_in, c_noise = edm_preconditioning(self.sde, t, self.data_std)
        a, sigma, c_skip, c_out, c_in = (append_dims(c.to(x.dtype), x.ndim) for c in (a, sigma, c_skip, c_out, c_in))
        x_tilde = x / a  # x~ = x_0 + sigma z
        D = c_skip * x_tilde + c_out * self.backbone(c_in * x_tilde, c_noise.to(x.dtype), y)
        # grad_x log p_t(x) = (a D - x) / s^2 = (D - x~) / (a sigma^2)
        return (D - x_tilde) / (a * sigma ** 2)

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The noise prediction eps_hat = -s(t) score."""
        return eps_from_score(self.sde, x, t, self(x, t, y))

    def x0(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The data prediction E[x_0 | x_t] by Tweedie's formula."""
        return x0_from_score(self.sde, x, t, self(x, t, y))

    def extra_repr(self) -> str:
        return f"data_std={self.data_std}, parameterization={self.parameterization!r}"
