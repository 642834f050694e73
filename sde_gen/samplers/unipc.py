"""UniPC: the unified predictor-corrector of Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models", NeurIPS), data-prediction form (their App. / the
multistep Algorithm with x0 prediction), on the shared exponential-integrator core.

Notation as in `exponential.py` and the paper: lambda = log(a / s), from t_i to t_{i+1} with
h = lambda_{i+1} - lambda_i > 0, the data predictions m_k = x0_hat(x_k, t_k), earlier points at
r_k = (lambda_{i-k} - lambda_i) / h < 0 (k = 1 .. p - 1) and D_k = (m_{i-k} - m_i) / r_k:

    UniP-p (predictor):  x_{i+1} = (s_{i+1} / s_i) x_i - a_{i+1} (e^{-h} - 1) m_i
                                    - a_{i+1} B(h) sum_{k=1}^{p-1} rho^p_k D_k
    UniC-p (corrector):  x^c_{i+1} = (s_{i+1} / s_i) x_i - a_{i+1} (e^{-h} - 1) m_i
                                    - a_{i+1} B(h) [sum_{k=1}^{p-1} rho^c_k D_k + rho^c_p (m_{i+1} - m_i)]

where m_{i+1} = x0_hat at the predicted x_{i+1}: the evaluation the next step needs anyway, so the
corrector costs no extra NFE (the corrected x^c_{i+1} is what the next predictor starts from). The
coefficients solve the order conditions R_p rho = g(h) / B(h) (the paper's Theorem 3.1):
R_p has rows (r_1^{q-1}, ..., r_p^{q-1}) for q = 1 .. p (r_p = 1 for the corrector's new point),
g_q(h) = q! h_z phi_{q+1}(h_z) with h_z = -h (data prediction), and the predictor solves the
(p - 1)-sized leading block; a 1 x 1 system takes its limit 1/2 (see `_rho`). B(h) is the free
scaling of the paper: `variant="bh1"` B(h) = h_z, `variant="bh2"` B(h) = e^{h_z} - 1. UniP-p has
order p, UniC-p raises it to p + 1 (the paper's Sec. 3.2); where a larger system is solved exactly
B(h) cancels, so the variants differ only in the 1 x 1 cases (UniP-2 and UniC-1).

The first steps use lower orders (warm-up, only i + 1 predictions exist) and, with
`lower_order_final`, the last steps on grids of fewer than 15 steps as well. The last grid point is
not corrected (no evaluation follows it); the base class's Tweedie denoising step then goes to s = 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_choice
from .exponential import ExponentialMultistep, phi, step_orders

VARIANTS = ("bh1", "bh2")
ORDERS = (1, 2, 3)


def _rho(r: np.ndarray, g_over_B: np.ndarray) -> np.ndarray:
    """Solve R rho = g / B with R_{q, k} = r_k^{q - 1} (the paper's R_p(h)), float64.

    A 1 x 1 system takes its h -> 0 limit rho = 1/2 (as the authors' implementation does): an exact
    solve would cancel B(h) from the update altogether, and it is here that B(h) matters (with
    B(h) = e^h - 1, UniP-2 is then exactly DPM-Solver++(2M)). Either choice keeps the order.
    """
    if r.size == 1:
        return np.full(1, 0.5)
    R = np.stack([r ** q for q in range(r.size)])
    return np.linalg.solve(R, g_over_B)


@dataclass(eq=False, kw_only=True)
class UniPC(ExponentialMultistep):
    """UniPC (Zhao et al. 2023): UniP-p predictor with the UniC-p corrector, data prediction.

    Args:
        solver_order: p in {1, 2, 3}, the predictor's order; with the corrector the order is p + 1.
        corrector: apply UniC with the next evaluation (free: no extra NFE).
        variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1).
        lower_order_final: lower the order of the last steps when num_steps < 15.
        (and the `Sampler` options; one evaluation per step; default grid "log_snr")
    """

    name = "unipc"

    solver_order: int = 2
    corrector: bool = True
    variant: str = "bh2"

    def __post_init__(self):
        if self.solver_order not in ORDERS or isinstance(self.solver_order, bool):
            raise ValueError(f"solver_order must be one of {ORDERS}; got {self.solver_order!r}")
        if not isinstance(self.corrector, bool):
            raise ValueError(f"corrector must be a bool (True or False); got {self.corrector!r}")
        check_choice("variant", self.variant, VARIANTS)
        super().__post_init__()

    @property
    def order(self) -> float:
        """p for UniP-p alone, p + 1 with the UniC-p corrector (Zhao et al. 2023, Sec. 3)."""
        return float(self.solver_order + self.corrector)

    def tables(self, sde, ts, coeffs):
        # a few dozen scalars per step: computed once on the host in float64 (numpy), then moved
        # to the grid's device, rather than as many tiny device operations
        dev = ts.device
        alpha, lam, h = (coeffs[k].detach().cpu().double().numpy() for k in ("alpha", "lam", "h"))
        N = h.size
        p_max = self.solver_order
        c = coeffs["sigma"][1:] / coeffs["sigma"][:-1]
        W = np.zeros((N, p_max))
        Wc = np.zeros((N, p_max + 1)) if self.corrector else None
        hz_all = -torch.from_numpy(h)  # the paper's h for data prediction is -h (its "hh")
        # g_q(h) = q! h_z phi_{q+1}(h_z) for q = 1 .. p_max + 1, all steps at once
        g_all = torch.stack([math.factorial(q) * hz_all * phi(q + 1, hz_all) for q in range(1, p_max + 2)], 1).numpy()
        B_all = (hz_all if self.variant == "bh1" else torch.expm1(hz_all)).numpy()
        em1 = torch.expm1(hz_all).numpy()
        for i, p in enumerate(step_orders(p_max, N, self.lower_order_final)):
            a, B = alpha[i + 1], B_all[i]
            g_over_B = g_all[i, :p] / B
            r = (lam[i - p + 1:i][::-1] - lam[i]) / h[i]  # r_1 .. r_{p-1} of the earlier points
            base = -a * em1[i]  # -a (e^{-h} - 1): the first-order (DDIM) weight on m_i
            # predictor: rho^p from the leading (p - 1) x (p - 1) block
            W[i, 0] = base
            if p > 1:
                rho_p = _rho(r, g_over_B[:-1])
                W[i, 1:p] = -a * B * rho_p / r
                W[i, 0] += a * B * (rho_p / r).sum()
            if Wc is not None:
                rho_c = _rho(np.append(r, 1.0), g_over_B)  # r_p = 1: the new point
                Wc[i, 0] = -a * B * rho_c[-1]  # on m_{i+1}
                Wc[i, 1] = base + a * B * (rho_c[-1] + (rho_c[:-1] / r).sum())
                if p > 1:
                    Wc[i, 2:p + 1] = -a * B * rho_c[:-1] / r
        to = lambda M: None if M is None else torch.as_tensor(M, dtype=torch.float64, device=dev)  # noqa: E731
        return c, to(W), to(Wc)
