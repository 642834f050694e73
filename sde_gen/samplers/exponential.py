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

__all__ = ["phi", "ExponentialMultistep", "ExponentialSinglestep", "exponential_coeffs", "prediction_coeffs", "step_orders",
           "singlestep_orders", "LOWER_ORDER_FINAL_BELOW"]


def phi(k: int, z: torch.Tensor) -> torch.Tensor:
    """phi_k(z) = sum_{n >= 0} z^n / (n + k)!, elementwise (float64 recommended).

    Series for |z| < 1 (no cancellation; 26 terms, the last below 1e-26 relative), the recursion
    phi_{k+1} = (phi_k - 1/k!) / z elsewhere. A few tensor operations whatever the size of z (the
    terms come from one cumulative product), so building a solver's tables stays cheap.
    """
    n = torch.arange(1, 26, dtype=z.dtype, device=z.device)
    small = torch.where(z.abs() < 1, z, torch.zeros_like(z))
    ratios = small.unsqueeze(-1) / (n + k)  # term_n / term_{n-1} = z / (n + k)
    series = (1.0 + torch.cumprod(ratios, -1).sum(-1)) / math.factorial(k)
    safe = torch.where(z.abs() < 1, torch.ones_like(z), z)
    rec = torch.exp(safe)
    for j in range(k):
        rec = (rec - 1.0 / math.factorial(j)) / safe
    return torch.where(z.abs() < 1, series, rec)


def exponential_coeffs(sde, ts: torch.Tensor) -> Dict[str, torch.Tensor]:
    """float64 `alpha`, `sigma` (the papers' alpha_t, sigma_t), `lam` = log(alpha / sigma) at the
    times `ts` (M,), and `h` = lam[1:] - lam[:-1] (M - 1,): what every solver of this family needs."""
    alpha, sigma = sde.marginal_coeffs(ts)
    lam = torch.log(alpha) - torch.log(sigma)  # lambda_t from the same alpha, sigma
    return {"alpha": alpha, "sigma": sigma, "lam": lam, "h": lam[1:] - lam[:-1]}


def prediction_coeffs(alpha: torch.Tensor, sigma: torch.Tensor, prediction: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pa, pb) with the prediction = pa x + pb score: x0_hat = (x + sigma^2 score) / alpha (Tweedie)
    for "data", eps_hat = -sigma score for "noise"."""
    if prediction == "data":
        return 1.0 / alpha, sigma ** 2 / alpha
    return torch.zeros_like(alpha), -sigma


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
        coeffs = exponential_coeffs(sde, ts)
        c, W, Wc = self.tables(sde, ts, coeffs)
        cast = lambda v: None if v is None else v.to(x.dtype)  # noqa: E731
        pa, pb = prediction_coeffs(coeffs["alpha"], coeffs["sigma"], self.prediction)
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


# ---- singlestep exponential integrators (DPM-Solver-2 / -3) ----
def singlestep_orders(order: int, evals: int, lower_order_final: bool) -> List[int]:
    """The orders of the singlestep steps that `evals` evaluations buy (an order-p step costs p).

    DPM-Solver-fast's split (Lu et al. 2022a, Sec. 3.4): as many order-`order` steps as fit, the
    remainder r = evals mod order as one last order-r step; for order 3 with r = 0 and
    `lower_order_final`, the last two steps are orders 2 and 1 (3, ..., 3, 2, 1), as the paper does."""
    q, r = divmod(evals, order)
    if r:
        return [order] * q + [r]
    if order == 3 and lower_order_final:
        return [3] * (q - 1) + [2, 1]
    return [order] * q


@dataclass(eq=False, kw_only=True)
class ExponentialSinglestep(GridSampler):
    """A singlestep exponential integrator in data prediction (an exponential Runge-Kutta step).

    A step of order p from t_i to t_{i+1} (h = lambda_{i+1} - lambda_i) evaluates the data
    prediction P_0 at t_i and at p - 1 intermediate times s_k with lambda(s_k) = lambda_i + c_k h,
    and each stage (the last one at c = 1 is the step's result) integrates exactly, against the
    exponential kernel of the variation-of-constants formula (module docstring), the line through
    P_0 and one earlier stage's P_j (at c_j):

        x_{s} = (s_s / s_i) x_i + a_s [ c h phi_1(-c h) P_0 + c h phi_2(-c h) (c / c_j) (P_j - P_0) ]

    (no slope term for j = None: the first-order DDIM step). The coefficients are float64 over the
    grid, computed once per run; the per-step orders come from `singlestep_orders`, so a budget is
    spent exactly. A subclass names its stages in `stage_plan`.

    Args:
        solver_order: the order p of the full steps (1 to 3); each costs p evaluations.
        lower_order_final: for p = 3 with a budget divisible by 3, end with orders 2 and 1.
        denoise: default False (as the multistep solvers of this module).
        (and the `Sampler` options; default grid "log_snr", over the step end points)
    """

    stochastic = False
    default_grid = "log_snr"
    supports_condition = False  # a step spends p evaluations: the conditioning passes assume one per step

    nfe: int = 20
    denoise: bool = False
    solver_order: int = 3
    lower_order_final: bool = True

    def __post_init__(self):
        if self.solver_order not in (1, 2, 3) or isinstance(self.solver_order, bool):
            raise ValueError(f"solver_order must be one of (1, 2, 3); got {self.solver_order!r}")
        check_bool("lower_order_final", self.lower_order_final)
        super().__post_init__()

    @property
    def order(self) -> float:
        return float(self.solver_order)

    @property
    def evals_per_step(self) -> int:
        """Evaluations of a full-order step (what a `pc` predictor step costs)."""
        return self.solver_order

    def steps_for(self, evals: int) -> int:
        return len(singlestep_orders(self.solver_order, evals, self.lower_order_final)) if evals > 0 else 0

    def time_grid(self, sde, device=None):
        """The grid of step end points; "optimized" looks up this solver's stored grid."""
        return time_grid(sde, self.num_steps, self.grid, t_min=self.t_min, rho=self.rho, device=device, sampler=self)

    @abstractmethod
    def stage_plan(self, p: int) -> List[Tuple[float, Optional[int]]]:
        """The stages of an order-p step: [(c_1, j_1), ..., (1.0, j_final)], c_k in (0, 1] the fraction
        of the lambda-step, j_k >= 1 the earlier intermediate stage whose prediction gives the slope
        against the step's start (None: first order)."""

    def init_state(self, sde, x, ts, evals):
        N, dev = ts.numel() - 1, ts.device
        orders = singlestep_orders(self.solver_order, evals, self.lower_order_final)
        if len(orders) != N:  # as a `pc` predictor: N full-order steps, the budget it was given
            if evals < N * self.solver_order:
                raise ValueError(f"the grid has {N} steps but {evals} evaluations buy {len(orders)} singlestep steps")
            orders = [self.solver_order] * N
        co = exponential_coeffs(sde, ts)
        lam, h = co["lam"], co["h"]
        plans = [self.stage_plan(p) for p in orders]
        # every intermediate stage time at once: lambda_i + c h, mapped back to t (float64)
        inner = [(i, c) for i, plan in enumerate(plans) for c, _ in plan[:-1]]
        if inner:
            idx = torch.tensor([i for i, _ in inner], device=dev)
            cc = torch.tensor([c for _, c in inner], dtype=torch.float64, device=dev)
            t_in = sde.time_at_half_log_snr(lam[idx] + cc * h[idx])
            a_in, s_in = sde.marginal_coeffs(t_in)
        cast = lambda v: v.to(x.dtype)  # noqa: E731
        pa, pb = prediction_coeffs(co["alpha"], co["sigma"], "data")
        steps, n = [], 0
        for i, plan in enumerate(plans):
            stages = []
            for k, (c, j) in enumerate(plan):
                last = k == len(plan) - 1
                if last:
                    a_c, s_c, t_c = co["alpha"][i + 1], co["sigma"][i + 1], None
                else:
                    a_c, s_c, t_c = a_in[n], s_in[n], t_in[n]
                    n += 1
                ch = c * h[i]
                w0 = -a_c * torch.expm1(-ch)  # a_s c h phi_1(-c h)
                wj = torch.zeros_like(w0)
                if j is not None:
                    c_j = plan[j - 1][0]
                    wj = a_c * ch * phi(2, -ch) * (c / c_j)
                g = {"cx": cast(s_c / co["sigma"][i]), "w0": cast(w0 - wj), "wj": cast(wj), "j": j, "t": t_c}
                if not last:
                    sp_a, sp_b = prediction_coeffs(a_c, s_c, "data")
                    g.update(pa=cast(sp_a), pb=cast(sp_b))
                stages.append(g)
            steps.append({"pa": cast(pa[i]), "pb": cast(pb[i]), "stages": stages})
        return {"steps": steps}

    def step(self, sde, score, x, i, t, t_next, generator, state):
        st = state["steps"][i]
        P = [st["pa"] * x + st["pb"] * score(x, t)]  # P_0 = x0_hat(x_i, t_i)
        for g in st["stages"]:
            u = g["cx"] * x + g["w0"] * P[0]
            if g["j"] is not None:
                u = u + g["wj"] * P[g["j"]]
            if g["t"] is None:  # the last stage: x at t_{i+1}
                return u
            P.append(g["pa"] * u + g["pb"] * score(u, g["t"].expand(x.shape[0])))
        raise AssertionError("stage_plan must end with the stage at c = 1")
