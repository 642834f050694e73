"""DPM-Solver++(2M) and (3M): multistep solvers of the probability-flow ODE in data-prediction form
(Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models",
Algorithm 2 for 2M, the third-order multistep of App. B for 3M; the exponential-integrator view of
Lu et al. 2022a), on the shared core of `exponential.py`.

With x_t = a(t) x_0 + s(t) z (the paper's alpha_t, sigma_t), lambda(t) = log(a(t) / s(t))
(`sde.half_log_snr`) and the data prediction x0_hat(x, t) = (x + s^2 score) / a (Tweedie), on a grid
t_0 = T > t_1 > ... > t_M with h_i = lambda(t_i) - lambda(t_{i-1}) > 0 and r_i = h_{i-1} / h_i:

    first order (DDIM):  x_i = (s_i / s_{i-1}) x_{i-1} - a_i (e^{-h_i} - 1) x0_hat_{i-1}
    2M (Alg. 2, line 8): D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}
                         x_i = (s_i / s_{i-1}) x_{i-1} - a_i (e^{-h_i} - 1) D_i
    3M:                  with r0 = h_{i-1} / h_i, r1 = h_{i-2} / h_i,
                         D1_0 = (x0_hat_{i-1} - x0_hat_{i-2}) / r0, D1_1 = (x0_hat_{i-2} - x0_hat_{i-3}) / r1,
                         D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),
                         x_i = (s_i / s_{i-1}) x_{i-1} + a_i h phi_1(-h) x0_hat_{i-1} + a_i h phi_2(-h) D1
                               + 2 a_i h phi_3(-h) D2

(3M written with the phi functions of `exponential.phi`: a_i h phi_1(-h) = -a_i (e^{-h} - 1),
h phi_2(-h) = (e^{-h} - 1) / h + 1, h phi_3(-h) = 1/2 - (e^{-h} - 1 + h) / h^2.) D1 and D2 are
h x0_hat' and h^2 x0_hat'' / 2 of the quadratic through the last three predictions, and the Taylor
term of x0_hat'' is a_i x0_hat'' h^3 phi_3(-h) = 2 a_i h phi_3(-h) D2, so 3M integrates that
quadratic exactly against the exponential kernel: third order (tests/test_samplers_fewsteps.py
checks the weights against quadrature). Note: the widely copied reference multistep code puts
a_i h phi_3(-h) on D2 (half the Taylor term); with that coefficient we measured order 2.2 on
gaussian16d (VP, NFE 20-160), with 2 h phi_3 order 3.1 (Karras grid). 2M's D_i keeps only the
leading term of phi_2 (1/2), as the paper does: second order.

One evaluation per step (the multistep reuses the previous predictions); the first steps use lower
orders (warm-up). Only the ratios s_i / s_{i-1} and a_i appear, so both work for every affine SDE
(VE has a = 1). The default grid is uniform in lambda ("log_snr", the paper's choice).

`lower_order_final` (on by default): on grids of fewer than 15 steps the last steps drop to lower
order (the last one first order), as the authors' reference implementation does: at very small NFE
the high-order extrapolation over the final, largest lambda-step is what destabilises the solver.
The final Tweedie denoising step of the base class is DPM-Solver++'s first-order step to s = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .exponential import LOWER_ORDER_FINAL_BELOW, ExponentialMultistep, ExponentialSinglestep, phi, step_orders

__all__ = ["DPMSolverPlusPlus2M", "DPMSolverPlusPlus3M", "DPMSolverSinglestep", "LOWER_ORDER_FINAL_BELOW"]


def _dpmpp_tables(coeffs, orders):
    """Predictor weights of DPM-Solver++ for per-step orders 1, 2 (Alg. 2) or 3 (3M), float64.

    A few scalars per step: computed on the host (numpy), then moved to the grid's device once."""
    sigma, dev = coeffs["sigma"], coeffs["h"].device
    alpha, h = (coeffs[k].detach().cpu().double().numpy() for k in ("alpha", "h"))
    N = h.size
    c = sigma[1:] / sigma[:-1]  # sigma_{t_i} / sigma_{t_{i-1}}
    W = np.zeros((N, 3))
    zh = -torch.from_numpy(h)
    phi1 = -alpha[1:] * torch.expm1(zh).numpy()  # -alpha (e^{-h} - 1); expm1 keeps small h exact
    phi2, phi3 = phi(2, zh).numpy(), phi(3, zh).numpy()  # all steps at once
    for i, p in enumerate(orders):  # i: the step from t_i to t_{i+1} (the paper's step i + 1)
        a, hh = alpha[i + 1], h[i]
        if p == 1:
            W[i, 0] = phi1[i]
        elif p == 2:
            w = 0.5 * hh / h[i - 1]  # 1 / (2 r_i)
            W[i, 0], W[i, 1] = phi1[i] * (1 + w), -phi1[i] * w
        else:
            r0, r1 = h[i - 1] / hh, h[i - 2] / hh
            D1_0 = np.array([1.0, -1.0, 0.0]) / r0  # weights on (x0_{i}, x0_{i-1}, x0_{i-2})
            D1_1 = np.array([0.0, 1.0, -1.0]) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)
            W[i] = phi1[i] * np.array([1.0, 0.0, 0.0]) + a * hh * phi2[i] * D1 + 2 * a * hh * phi3[i] * D2
    return c, torch.as_tensor(W, dtype=torch.float64, device=dev)


@dataclass(eq=False, kw_only=True)
class DPMSolverPlusPlus2M(ExponentialMultistep):
    """DPM-Solver++(2M) multistep (Lu et al. 2022b, Algorithm 2) for every SDE of the library.

    Args:
        lower_order_final: first-order last step when num_steps < 15 (stability at small NFE).
        (and the `Sampler` options; nfe defaults to 20, one evaluation per step, num_steps =
        nfe - denoise; default grid "log_snr")
    """

    name = "dpm_solver"
    order = 2.0

    denoise: bool = True

    def tables(self, sde, ts, coeffs):
        c, W = _dpmpp_tables(coeffs, step_orders(2, ts.numel() - 1, self.lower_order_final))
        return c, W[:, :2], None


@dataclass(eq=False, kw_only=True)
class DPMSolverPlusPlus3M(ExponentialMultistep):
    """DPM-Solver++(3M) multistep (Lu et al. 2022b, App. B; third order) for every SDE of the library.

    Args:
        lower_order_final: lower the order of the last two steps when num_steps < 15.
        (and the `Sampler` options; one evaluation per step; default grid "log_snr")
    """

    name = "dpm_solver_3m"
    order = 3.0

    def tables(self, sde, ts, coeffs):
        c, W = _dpmpp_tables(coeffs, step_orders(3, ts.numel() - 1, self.lower_order_final))
        return c, W, None


#: the stages of DPM-Solver-1/2/3 (Lu et al. 2022a, Algorithms 1 and 2 with r1 = 1/2; r1 = 1/3, r2 = 2/3)
SINGLESTEP_STAGES = {
    1: [(1.0, None)],
    2: [(0.5, None), (1.0, 1)],
    3: [(1.0 / 3.0, None), (2.0 / 3.0, 1), (1.0, 2)],
}


@dataclass(eq=False, kw_only=True)
class DPMSolverSinglestep(ExponentialSinglestep):
    """Singlestep DPM-Solver-2 / -3 in data prediction (DPM-Solver++(2S) / (3S)) for every SDE.

    Lu et al. 2022a ("DPM-Solver", Algorithms 1 and 2, and DPM-Solver-fast's order split of
    Sec. 3.4) in the data-prediction form of Lu et al. 2022b (Sec. 4, Algorithm 1 for 2S), with
    s, a, lambda as in `exponential.py` and P = x0_hat. A step of order 3 from t_i (h = its lambda-step):

        u1 = (s_{s1} / s_i) x_i + a_{s1} r1 h phi_1(-r1 h) P_i                     (r1 = 1/3)
        u2 = (s_{s2} / s_i) x_i + a_{s2} [r2 h phi_1(-r2 h) P_i + r2 h phi_2(-r2 h) (r2 / r1) (P(u1) - P_i)]
        x_{i+1} = (s_{i+1} / s_i) x_i + a_{i+1} [h phi_1(-h) P_i + h phi_2(-h) (1 / r2) (P(u2) - P_i)]
                                                                                    (r2 = 2/3)

    (r h phi_1(-r h) = 1 - e^{-r h}, r h phi_2(-r h) = (e^{-r h} - 1) / (r h) + 1.) Order 2:
    u1 at r1 = 1/2 and x_{i+1} from the line through P_i and P(u1), integrated exactly (the
    "Taylor" form of 2S: Algorithm 1 of Lu et al. 2022b keeps only phi_2's leading term 1/2, a
    second-order difference). Order 1 is DDIM. A budget of E evaluations buys the steps of
    `exponential.singlestep_orders`; the grid ("log_snr" by default, the paper's) places their end points.

    Args:
        solver_order: 1, 2 or 3 (evaluations per full step).
        lower_order_final: for order 3 with E divisible by 3, end with steps of order 2 and 1.
        (and the `Sampler` options; denoise defaults to False)
    """

    name = "dpm_solver_singlestep"

    def stage_plan(self, p):
        return SINGLESTEP_STAGES[p]
