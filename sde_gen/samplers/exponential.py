"""The exponential-integrator core shared by the multistep probability-flow solvers (DPM-Solver++
2M and 3M, UniPC, DEIS, iPNDM).

With x_t = a(t) x_0 + s(t) z (the papers' alpha_t, sigma_t) and the half log-SNR
lambda(t) = log(a(t) / s(t)) (`sde.half_log_snr`), the probability-flow ODE has the exact
variation-of-constants solution in two equivalent forms:

    data prediction   x_t = s_t / s_u x_u + a_t int_{lambda_u}^{lambda_t} e^{-(lambda_t - lambda)} x0_hat dlambda
                      (Lu et al. 2022b, "DPM-Solver++", eq. 9 / Sec. 4)
    noise prediction  x_t = a_t / a_u x_u + a_t int_{rho_u}^{rho_t} eps_hat drho,   rho = s / a = e^{-lambda}
                      (Zhang & Chen 2023, "DEIS", the rho-parameterisation of Sec. 4, rhoAB-DEIS)

with x0_hat = (x + s^2 score) / a (Tweedie) and eps_hat = -s score. Every multistep method of this
family replaces the prediction inside the integral by a polynomial through the last few
predictions and integrates it exactly, so a step is a fixed linear map

    x_{i+1} = c_i x_i + sum_j W_{i,j} P_{i-j}                                  (predictor)

with P the data or noise predictions at the grid points and c_i = s_{i+1} / s_i (data) or
a_{i+1} / a_i (noise). UniPC adds a corrector that reuses the next evaluation (no extra NFE):

    x_{i+1}^c = c_i x_i + sum_j Wc_{i,j} P_{i+1-j}      (j = 0 is the new point)

A solver computes only its float64 tables (c, W, Wc) over the grid in `tables`; the loop, the
buffer of past predictions, the lower-order warm-up and `lower_order_final` live here.

Integrals of the exponential kernel against monomials are the phi functions of exponential
integrators (Hochbruck & Ostermann 2010): phi_0(z) = e^z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z,
so int_0^h e^{-(h - u)} u^k / k! du = h^{k+1} phi_{k+1}(-h). `phi` evaluates them without the
cancellation of the recursion at small |z|.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .base import GridSampler, check_bool
from .grids import time_grid

#: below this many steps, `lower_order_final` lowers the order of the last steps (as DPM-Solver++)
LOWER_ORDER_FINAL_BELOW = 15

__all__ = ["phi", "ExponentialMultistep", "step_orders", "LOWER_ORDER_FINAL_BELOW"]


def phi(k: int, z: torch.Tensor) -> torch.Tensor:
    """phi_k(z) = sum_{n >= 0} z^n / (n + k)!, elementwise (float64 recommended).

    Series for |z| < 1 (no cancellation), the recursion phi_{k+1} = (phi_k - 1/k!) / z elsewhere.
    """
    series = torch.zeros_like(z)
    term = torch.full_like(z, 1.0 / math.factorial(k))
    for n in range(40):  # |z| < 1: the 40th term is below 1e-47
        series = series + term
        term = term * z / (n + k + 1)
    safe = torch.where(z.abs() < 1, torch.ones_like(z), z)
    rec = torch.exp(safe)
    for j in range(k):
        rec = (rec - 1.0 / math.factorial(j)) / safe
    return torch.where(z.abs() < 1, series, rec)


def step_orders(order: int, num_steps: int, lower_order_final: bool) -> List[int]:
    """The order used at each step: warm-up min(order, i + 1) (only i + 1 predictions exist), and
    with `lower_order_final` on grids of fewer than 15 steps also min(., N - i), so the last step
    is first order (Lu et al. 2022b, Sec. 5 / App.; the large last lambda-step is where a high-order
    extrapolation destabilises few-step sampling)."""
    out = []
    for i in range(num_steps):
        p = min(order, i + 1)
        if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
            p = min(p, num_steps - i)
        out.append(p)
    return out


@dataclass(eq=False, kw_only=True)
class ExponentialMultistep(GridSampler):
    """A multistep exponential integrator: a subclass writes `tables` (float64 coefficients).

    Class facts a subclass sets: `prediction` ("data" for x0_hat, "noise" for eps_hat).

    Args:
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
        denoise: default False here: at the default t_min = eps the Tweedie step barely moves x
            (s(eps) ~ 1e-2), so its evaluation is better spent on a grid step: at NFE 5 and 10 on
            gaussian16d and mixture64d, VP and VE, better in 8 of 8 cases for UniPC and 3M, 6 of 8
            for 2M (benchmarks/results/fewsteps_scan.md). DPM-Solver++(2M) keeps True (its behaviour).
        (and the `Sampler` options; one evaluation per step; default grid "log_snr")
    """

    evals_per_step = 1
    stochastic = False
    multistep = True
    default_grid = "log_snr"
    prediction = "data"

    nfe: int = 20
    denoise: bool = False
    lower_order_final: bool = True

    def __post_init__(self):
        check_bool("lower_order_final", self.lower_order_final)
        super().__post_init__()

    def time_grid(self, sde, device=None):
        """The sampler's grid; "optimized" looks up this solver's stored grid (`grids.stored_grid`)."""
        return time_grid(sde, self.num_steps, self.grid, t_min=self.t_min, rho=self.rho, device=device, sampler=self)

    # ---- what a solver writes ----
    @abstractmethod
    def tables(self, sde, ts: torch.Tensor, coeffs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(c, W, Wc) in float64: c (N,), W (N, K) predictor weights on P_i, P_{i-1}, ...,
        Wc (N, K + 1) corrector weights on P_{i+1}, P_i, ... or None (no corrector).

        `coeffs` holds float64 `alpha`, `sigma`, `lam` (N + 1,) and `h` (N,) = lam[1:] - lam[:-1].
        """

    # ---- the shared loop ----
    def init_state(self, sde, x, ts, evals):
        alpha, sigma = sde.marginal_coeffs(ts)  # the papers' alpha_t, sigma_t (float64)
        lam = torch.log(alpha) - torch.log(sigma)  # lambda_t = log(alpha_t / sigma_t), from the same alpha, sigma
        coeffs = {"alpha": alpha, "sigma": sigma, "lam": lam, "h": lam[1:] - lam[:-1]}
        c, W, Wc = self.tables(sde, ts, coeffs)
        cast = lambda v: None if v is None else v.to(x.dtype)  # noqa: E731
        # the prediction from the score: x0_hat = (x + sigma^2 score) / alpha, eps_hat = -sigma score
        if self.prediction == "data":
            pa, pb = 1.0 / alpha, sigma ** 2 / alpha
        else:
            pa, pb = torch.zeros_like(alpha), -sigma
        width = W.shape[1] if Wc is None else max(W.shape[1], Wc.shape[1])
        last = lambda M: [int(r.nonzero().max()) + 1 if r.any() else 0 for r in (M != 0).cpu()]  # noqa: E731
        return {
            "c": cast(c), "W": cast(W), "Wc": cast(Wc), "pa": cast(pa), "pb": cast(pb),
            # which weights are non-zero, as Python data: the loop skips the rest without a host sync
            "used": last(W), "used_c": None if Wc is None else last(Wc),
            "width": width, "P": [], "x_prev": None,
        }

    def step(self, sde, score, x, i, t, t_next, generator, state):
        S = state
        P_i = S["pa"][i] * x + S["pb"][i] * score(x, t)  # x0_hat or eps_hat at (x_i, t_i)
        P = S["P"]
        P.insert(0, P_i)  # P[j] = P_{i-j}
        del P[S["width"]:]
        if S["Wc"] is not None and i > 0:
            # corrector of the previous step with the new evaluation: x_i <- c_{i-1} x_{i-1} + sum_j Wc P_{i-j}
            # (the prediction P_i stays the one at the predicted x_i: no extra evaluation)
            k = S["used_c"][i - 1]
            x = S["c"][i - 1] * S["x_prev"] + sum(S["Wc"][i - 1, j] * P[j] for j in range(k))
        S["x_prev"] = x
        k = S["used"][i]
        return S["c"][i] * x + sum(S["W"][i, j] * P[j] for j in range(k))
