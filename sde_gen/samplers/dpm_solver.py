"""DPM-Solver++(2M): the second-order multistep solver of the probability-flow ODE in data-
prediction form (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2; the exponential-integrator view of Lu et al. 2022a).

With x_t = a(t) x_0 + s(t) z (the paper's alpha_t, sigma_t), lambda(t) = log(a(t) / s(t))
(`sde.half_log_snr`) and the data prediction x0_hat(x, t) = (x + s^2 score) / a (Tweedie), the
ODE's exact solution is x_t = s_t / s_u x_u + s_t int_{lambda_u}^{lambda_t} e^lambda x0_hat dlambda.
On a grid t_0 = T > t_1 > ... > t_M with h_i = lambda(t_i) - lambda(t_{i-1}) > 0:

    first step (order 1):  x_1 = (s_1 / s_0) x_0 - a_1 (e^{-h_1} - 1) x0_hat_0
    step i >= 2:           r_i = h_{i-1} / h_i
                           D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}
                           x_i = (s_i / s_{i-1}) x_{i-1} - a_i (e^{-h_i} - 1) D_i

One evaluation per step (the multistep reuses the previous x0_hat); global order 2. Only the ratios
s_i / s_{i-1} and a_i appear, so it works for every affine SDE (VE has a = 1). The default grid is
uniform in lambda ("log_snr", the paper's choice); "karras" and "uniform" are allowed.

`lower_order_final` (on by default): when the run has fewer than 15 steps, the last step is first
order. At very small NFE the second-order extrapolation of the final, largest-lambda step is what
destabilises the solver; the authors' reference implementation (and later samplers) do the same.
The final Tweedie denoising step of the base class is DPM-Solver++'s first-order step to s = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import GridSampler, check_bool

#: below this many steps, `lower_order_final` makes the last step first order
LOWER_ORDER_FINAL_BELOW = 15


@dataclass(eq=False, kw_only=True)
class DPMSolverPlusPlus2M(GridSampler):
    """DPM-Solver++(2M) multistep (Lu et al. 2022b, Algorithm 2) for every SDE of the library.

    Args:
        lower_order_final: first-order last step when num_steps < 15 (stability at small NFE).
        (and the `Sampler` options; nfe defaults to 20, one evaluation per step, num_steps =
        nfe - denoise; default grid "log_snr")
    """

    name = "dpm_solver"
    evals_per_step = 1
    stochastic = False
    order = 2.0
    default_grid = "log_snr"

    nfe: int = 20
    lower_order_final: bool = True

    def __post_init__(self):
        check_bool("lower_order_final", self.lower_order_final)
        super().__post_init__()

    def init_state(self, sde, x, ts, evals):
        """The schedule over the grid in float64, then x's dtype: the loop only indexes it."""
        N = ts.numel() - 1
        alpha, sigma = sde.marginal_coeffs(ts)  # the paper's alpha_t, sigma_t
        lam = torch.log(alpha) - torch.log(sigma)  # lambda_t = log(alpha_t / sigma_t), from the same alpha, sigma
        h = lam[1:] - lam[:-1]  # line 1: h_i = lambda_{t_i} - lambda_{t_{i-1}} > 0
        r = torch.ones_like(h)
        r[1:] = h[:-1] / h[1:]  # line 7: r_i = h_{i-1} / h_i
        second_order = [False] + [True] * (N - 1)  # line 4: the first step is first order
        if self.lower_order_final and N < LOWER_ORDER_FINAL_BELOW:
            second_order[-1] = False
        cast = lambda v: v.to(x.dtype)  # noqa: E731
        return {
            "alpha": cast(alpha), "sigma2": cast(sigma ** 2),
            "sigma_ratio": cast(sigma[1:] / sigma[:-1]),  # sigma_{t_i} / sigma_{t_{i-1}}
            "phi": cast(-alpha[1:] * torch.expm1(-h)),  # -alpha_{t_i} (e^{-h_i} - 1), expm1 keeps small h exact
            "half_over_r": cast(0.5 / r),  # 1 / (2 r_i)
            "second_order": second_order,
            "x_theta_prev": None,  # the buffer Q
        }

    def step(self, sde, score, x, i, t, t_next, generator, state):
        c = state
        x_theta = (x + c["sigma2"][i] * score(x, t)) / c["alpha"][i]  # data prediction x_theta(x, t) (Tweedie)
        if c["second_order"][i]:
            w = c["half_over_r"][i]
            D = (1 + w) * x_theta - w * c["x_theta_prev"]  # line 8
        else:
            D = x_theta  # line 4: the first-order (DDIM) update
        c["x_theta_prev"] = x_theta  # lines 5 and 10: Q <- x_theta
        return c["sigma_ratio"][i] * x + c["phi"][i] * D  # line 9
