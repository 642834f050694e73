"""Discrete-state forward processes: categorical Markov chains on tokens (Austin et al. 2021, D3PM).

Each of the L positions of x (B, *event) holds a token in {0, ..., S - 1} and is corrupted
independently by a Markov chain with row-stochastic one-step matrices (D3PM eq. 1, row convention
[Q_t]_ij = q(x_t = j | x_{t-1} = i)):

    q(x_t | x_{t-1}) = Cat(x_t; x_{t-1} Q_t),                 t = 1, ..., T
    q(x_t | x_0)     = Cat(x_t; x_0 Qbar_t),   Qbar_t = Q_1 Q_2 ... Q_t,   Qbar_0 = I      (D3PM eq. 2)
    q(x_s | x_t, x_0) = [Q_{s->t}]_{x_s, x_t} [Qbar_s]_{x_0, x_s} / [Qbar_t]_{x_0, x_t},  s < t,
                        Q_{s->t} = Q_{s+1} ... Q_t                                          (D3PM eq. 3)

The reverse model predicts p(x_0 | x_t) per position; the reverse kernel averages the posterior
over it, p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t) (`posterior_probs`). With the
exact p(x_0^l | x_t) this is the exact per-position marginal of the reverse kernel (x_s^l depends on
the rest of x_t only through x_0^l). D3PM's eq. 4 instead weights by q(x_t | x_0) p~(x_0 | x_t),
a parameterisation that is not the exact reverse even for the exact p(x_0 | x_t).

Processes (D3PM section 3.1 and appendix A.2):
    uniform              Q_t = (1 - beta_t) I + beta_t 1 1^T / K                    (S = K)
    absorbing            Q_t = (1 - beta_t) I + beta_t 1 e_m^T, m = K the mask      (S = K + 1)
    discretised Gaussian [Q_t]_ij = exp(-4 (i - j)^2 / ((K - 1)^2 beta_t)) / Z_t for i != j,
                         diagonal = 1 - the rest of the row                         (S = K, ordinal)
The first two are rank-one updates of I towards a stationary law m, so
Qbar_{s->t} = (abar_t / abar_s) I + (1 - abar_t / abar_s) 1 m^T with abar_t = prod_{u<=t} (1 - beta_u):
that closed form is used; the discretised Gaussian multiplies its (S, S) matrices (cached).

Schedules of beta_t, t = 1..T:
    cosine             abar(t) = cos((t/T + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2), beta_t = 1 - abar_t/abar_{t-1},
                       clipped to 0.999 (Nichol & Dhariwal 2021, eq. 17; used by D3PM for uniform)
    linear             beta_t linear from beta_start to beta_end (D3PM's discretised Gaussian: 0.02 to 1)
    mutual_information beta_t = 1 / (T - t + 1) (D3PM section 4; for absorbing: abar_t = 1 - t/T, all
                       tokens masked at t = T)

An integer grid of T steps is the process itself (D3PM is defined in discrete time); samplers may
visit any sub-grid with the transition matrices Q_{s->t}.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .._validation import check_choice, check_in_open_interval, check_positive_int

__all__ = [
    "SCHEDULES",
    "beta_schedule",
    "DiscreteProcess",
    "UniformProcess",
    "AbsorbingProcess",
    "DiscretizedGaussianProcess",
    "PROCESSES",
    "build_process",
    "check_tokens",
    "posterior_probs",
    "sample_categorical",
]

SCHEDULES = ("cosine", "linear", "mutual_information")


def beta_schedule(name: str, num_timesteps: int, beta_start: float = 0.02, beta_end: float = 1.0,
                  cosine_s: float = 0.008) -> torch.Tensor:
    """The (T,) float64 betas beta_1..beta_T of schedule `name` (one of `SCHEDULES`)."""
    check_choice("schedule", name, SCHEDULES)
    T = check_positive_int("num_timesteps", num_timesteps)
    t = torch.arange(T + 1, dtype=torch.float64)
    if name == "cosine":
        f = torch.cos((t / T + cosine_s) / (1 + cosine_s) * math.pi / 2)
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(0.0, 0.999)
    if name == "linear":
        check_in_open_interval("beta_start", beta_start, 0.0, 1.0 + 1e-12)
        check_in_open_interval("beta_end", beta_end, 0.0, 1.0 + 1e-12)
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return 1.0 / (T - t[1:] + 1)


def check_tokens(x: torch.Tensor, num_states: int, name: str = "x", mask_index: Optional[int] = None) -> torch.Tensor:
    """`x` as a long tensor (B, *event) of ids in [0, num_states), else one ValueError naming `name`.

    With `mask_index`, the mask token is refused too (data x_0 never holds it).
    """
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of token ids in [0, {num_states}); got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (B, *event) with at least one position; got shape {tuple(x.shape)}")
    x = x.long()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_states):
        raise ValueError(f"{name} must hold token ids in [0, {num_states}); got values in "
                         f"[{int(x.min())}, {int(x.max())}]")
    if mask_index is not None and bool((x == mask_index).any()):
        raise ValueError(f"{name} must not hold the mask token {mask_index} (data ids lie in [0, {mask_index}))")
    return x


def _batched(M: torch.Tensor, B: int) -> torch.Tensor:
    return M.expand(B, *M.shape[-2:]) if M.ndim == 2 else M


def posterior_probs(x_t: torch.Tensor, x0_probs: torch.Tensor, Q_st: torch.Tensor, Qbar_s: torch.Tensor,
                    Qbar_t: torch.Tensor) -> torch.Tensor:
    """p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t) per position (D3PM eq. 3, averaged).

    Written as [Q_{s->t}]_{x_s, x_t} * sum_{x_0} w(x_0) [Qbar_s]_{x_0, x_s} with
    w(x_0) = p(x_0 | x_t) / [Qbar_t]_{x_0, x_t} (0 where x_t is impossible from x_0), a matrix product
    that needs no (B, L, S, S) tensor; the result is renormalised, which conditions the model on the
    x_0 that can reach x_t (exact when p(x_0 | x_t) is). A one-hot `x0_probs` gives q(x_s | x_t, x_0).

    Args:
        x_t: (B, L) long tokens in [0, S).
        x0_probs: (B, L, K) probabilities of x_0 (K <= S data states).
        Q_st, Qbar_s, Qbar_t: (S, S) or (B, S, S) float64 matrices.

    Returns:
        (B, L, S) float64 probabilities of x_s.
    """
    B, L = x_t.shape
    K = x0_probs.shape[-1]
    if Q_st.ndim == Qbar_s.ndim == Qbar_t.ndim == 2:  # one step for the whole batch (samplers): plain indexing
        A = Q_st.T[x_t]  # A[b, l, j] = Q_st[j, x_t[b, l]]
        col = Qbar_t.T[x_t][..., :K]  # col[b, l, k] = Qbar_t[k, x_t[b, l]]
        w = x0_probs.to(torch.float64) * torch.where(col > 0, 1.0 / col.clamp_min(1e-300), torch.zeros_like(col))
        p = A * (w @ Qbar_s[:K, :])
        return p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    Q_st, Qbar_s, Qbar_t = (_batched(M, B) for M in (Q_st, Qbar_s, Qbar_t))
    S = Q_st.shape[-1]
    idx = x_t[:, :, None].expand(B, L, S)
    A = torch.gather(Q_st.transpose(1, 2), 1, idx)  # A[b, l, j] = Q_st[b, j, x_t[b, l]]
    col = torch.gather(Qbar_t.transpose(1, 2), 1, idx)[..., :K]  # col[b, l, k] = Qbar_t[b, k, x_t[b, l]]
    w = x0_probs.to(torch.float64) * torch.where(col > 0, 1.0 / col.clamp_min(1e-300), torch.zeros_like(col))
    p = A * torch.bmm(w, Qbar_s[:, :K, :])
    return p / p.sum(-1, keepdim=True).clamp_min(1e-300)


class DiscreteProcess(nn.Module, ABC):
    """A D3PM forward process on K data categories (S states): the maths shared by all of them.

    A subclass gives its one-step matrix `step_matrix(t)`; everything else (Qbar_t, q(x_t | x_0),
    sampling it, the posterior) is written here. Closed forms of `cumulative_matrix` and
    `transition_matrix` may override the products.

    Args:
        num_classes: K data categories (>= 2).
        num_timesteps: T.
        schedule: a name of `SCHEDULES` (None: the process's `default_schedule`).
        beta_start, beta_end: of the linear schedule.

    Attributes:
        num_states: S (K, or K + 1 with a mask token).
        mask_index: the mask token (K) or None.
        betas: (T,) float64 buffer, betas[t - 1] = beta_t.
    """

    name = ""
    default_schedule = "cosine"
    mask_index: Optional[int] = None

    def __init__(self, num_classes: int, num_timesteps: int = 1000, schedule: Optional[str] = None,
                 beta_start: float = 0.02, beta_end: float = 1.0):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2; got {num_classes}")
        self.num_timesteps = check_positive_int("num_timesteps", num_timesteps)
        self.schedule = self.default_schedule if schedule is None else check_choice("schedule", schedule, SCHEDULES)
        self.register_buffer("betas", beta_schedule(self.schedule, num_timesteps, beta_start, beta_end))
        self._cumulative: Optional[torch.Tensor] = None

    @property
    def num_states(self) -> int:
        return self.num_classes

    @property
    def T(self) -> int:
        return self.num_timesteps

    # ---- matrices ----
    @abstractmethod
    def step_matrix(self, t: torch.Tensor) -> torch.Tensor:
        """Q_t for a (B,) long tensor of steps in [1, T]: (B, S, S) float64."""

    def stationary(self) -> torch.Tensor:
        """(S,) the prior p(x_T) = the limit law of the chain."""
        return torch.full((self.num_states,), 1.0 / self.num_states, dtype=torch.float64, device=self.betas.device)

    def _cumulative_table(self) -> torch.Tensor:
        """(T + 1, S, S) Qbar_0 = I, Qbar_t = Qbar_{t-1} Q_t (built once, on first use)."""
        if self._cumulative is None or self._cumulative.device != self.betas.device:
            Q = self.step_matrix(torch.arange(1, self.T + 1, device=self.betas.device))
            table = [torch.eye(self.num_states, dtype=torch.float64, device=self.betas.device)]
            for t in range(self.T):
                table.append(table[-1] @ Q[t])
            self._cumulative = torch.stack(table)
        return self._cumulative

    def cumulative_matrix(self, t: torch.Tensor) -> torch.Tensor:
        """Qbar_t for a (B,) long tensor of steps in [0, T]: (B, S, S) float64 (Qbar_0 = I)."""
        return self._cumulative_table()[t]

    def transition_matrix(self, s: int, t: int) -> torch.Tensor:
        """Q_{s->t} = Q_{s+1} ... Q_t for integers 0 <= s < t <= T: (S, S) float64."""
        self._check_pair(s, t)
        steps = torch.arange(s + 1, t + 1, device=self.betas.device)
        out = torch.eye(self.num_states, dtype=torch.float64, device=self.betas.device)
        for Q in self.step_matrix(steps):
            out = out @ Q
        return out

    def _check_pair(self, s: int, t: int) -> None:
        if not (isinstance(s, int) and isinstance(t, int) and 0 <= s < t <= self.T):
            raise ValueError(f"s and t must be integers with 0 <= s < t <= T = {self.T}; got s={s!r}, t={t!r}")

    # ---- marginals and posterior ----
    def check_data(self, x0: torch.Tensor, name: str = "x0") -> torch.Tensor:
        """x_0 as long ids in [0, K) (no mask token), else a ValueError naming `name`."""
        if self.mask_index is not None:
            return check_tokens(x0, self.num_states, name, mask_index=self.mask_index)
        return check_tokens(x0, self.num_classes, name)

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = row x_0 of Qbar_t: (B, *event, S) float64 for x0 (B, *event), t (B,)."""
        Qbar = self.cumulative_matrix(t)  # (B, S, S)
        B = x0.shape[0]
        flat = x0.reshape(B, -1)
        rows = torch.gather(Qbar, 1, flat[:, :, None].expand(B, flat.shape[1], self.num_states))
        return rows.reshape(*x0.shape, self.num_states)

    def q_log_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_0) (-inf where impossible): (B, *event, S) float64."""
        return self.q_probs(x0, t).log()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for x0 (B, *event) long and t (B,) long: (B, *event) long."""
        return sample_categorical(self.q_probs(x0, t), generator)

    def posterior_probs(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(x_{t-1} | x_t) = sum_{x_0} q(x_{t-1} | x_t, x_0) p(x_0 | x_t), t (B,) in [1, T].

        Args:
            x_t: (B, *event) long. x0_probs: (B, *event, K) (a one-hot gives q(x_{t-1} | x_t, x_0)).
            t: (B,) long steps.

        Returns:
            (B, *event, S) float64.
        """
        B = x_t.shape[0]
        p = posterior_probs(x_t.reshape(B, -1), x0_probs.reshape(B, -1, x0_probs.shape[-1]),
                            self.step_matrix(t), self.cumulative_matrix(t - 1), self.cumulative_matrix(t))
        return p.reshape(*x_t.shape, self.num_states)

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """x_T ~ p(x_T) = stationary law per position: (shape) long."""
        if device is None:
            device = generator.device if generator is not None else self.betas.device
        probs = self.stationary().to(device).expand(*shape, self.num_states)
        return sample_categorical(probs, generator)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_states={self.num_states}, T={self.T}, schedule={self.schedule!r}"


def sample_categorical(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of `probs` (..., S) (unnormalised allowed): (...) long, by inverse CDF."""
    cdf = probs.to(torch.float64).cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=generator.device if generator is not None else cdf.device,
                   dtype=torch.float64).to(cdf.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_max(probs.shape[-1] - 1)[..., 0]


class _RankOneProcess(DiscreteProcess):
    """Q_t = (1 - beta_t) I + beta_t 1 m^T: every power is of the same form (closed-form Qbar)."""

    def __init__(self, num_classes: int, num_timesteps: int = 1000, schedule: Optional[str] = None,
                 beta_start: float = 0.02, beta_end: float = 1.0):
        super().__init__(num_classes, num_timesteps, schedule, beta_start, beta_end)
        self.register_buffer("alphas_cumprod", torch.cat([torch.ones(1, dtype=torch.float64),
                                                          torch.cumprod(1 - self.betas, 0)]))

    def _mix(self, keep: torch.Tensor) -> torch.Tensor:
        """(B, S, S): keep I + (1 - keep) 1 m^T for keep (B,)."""
        S = self.num_states
        eye = torch.eye(S, dtype=torch.float64, device=keep.device)
        m = self.stationary().to(keep.device)
        return keep[:, None, None] * eye + (1 - keep)[:, None, None] * m.expand(S, S)

    def step_matrix(self, t: torch.Tensor) -> torch.Tensor:
        return self._mix(1 - self.betas[t - 1])

    def cumulative_matrix(self, t: torch.Tensor) -> torch.Tensor:
        return self._mix(self.alphas_cumprod[t])

    def transition_matrix(self, s: int, t: int) -> torch.Tensor:
        self._check_pair(s, t)
        # abar_t / abar_s as a product (no 0/0 once abar reaches 0)
        keep = torch.prod(1 - self.betas[s:t]).reshape(1)
        return self._mix(keep)[0]


class UniformProcess(_RankOneProcess):
    """Uniform transitions towards Cat(1/K) (D3PM section 3.1, after Hoogeboom et al. 2021)."""

    name = "uniform"
    default_schedule = "cosine"


class AbsorbingProcess(_RankOneProcess):
    """Absorbing transitions into the mask token m = K (D3PM section 3.1; S = K + 1 states).

    With the mutual-information schedule abar_T = 0: every token is the mask at t = T.
    """

    name = "absorbing"
    default_schedule = "mutual_information"

    @property
    def num_states(self) -> int:
        return self.num_classes + 1

    @property
    def mask_index(self) -> int:
        return self.num_classes

    def stationary(self) -> torch.Tensor:
        m = torch.zeros(self.num_states, dtype=torch.float64, device=self.betas.device)
        m[self.mask_index] = 1.0
        return m

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """1 - abar_t: the probability that a token is masked at step t (B,) -> (B,) float64."""
        return 1 - self.alphas_cumprod[t]

    def time_for_mask_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """The first step t in [1, T] whose mask probability reaches `ratio` (float64 (N,)) -> (N,) long."""
        return torch.searchsorted(1 - self.alphas_cumprod, ratio.to(self.betas.device)).clamp(1, self.T)


class DiscretizedGaussianProcess(DiscreteProcess):
    """Discretised-Gaussian transitions for ordinal data (D3PM appendix A.2.1): near levels mix more.

    [Q_t]_ij = exp(-4 (i - j)^2 / ((K - 1)^2 beta_t)) / sum_{n=-(K-1)}^{K-1} exp(-4 n^2 / ((K - 1)^2 beta_t))
    for i != j and the diagonal completes the row; the matrix is symmetric and doubly stochastic, so
    the limit law is uniform. Qbar_t is the (cached) product of the Q_t.
    """

    name = "gaussian"
    default_schedule = "linear"

    def step_matrix(self, t: torch.Tensor) -> torch.Tensor:
        K = self.num_classes
        beta = self.betas[t - 1][:, None, None]  # (B, 1, 1)
        idx = torch.arange(K, dtype=torch.float64, device=beta.device)
        d2 = (idx[:, None] - idx[None, :]) ** 2  # (K, K)
        n2 = torch.arange(-(K - 1), K, dtype=torch.float64, device=beta.device) ** 2  # (2K - 1,)
        scale = 4.0 / ((K - 1) ** 2 * beta)
        Z = torch.exp(-n2 * scale).sum(-1, keepdim=True)  # (B, 1, 1)
        off = torch.exp(-d2 * scale) / Z
        eye = torch.eye(K, dtype=torch.bool, device=beta.device)
        off = off.masked_fill(eye, 0.0)
        # off-diagonal rows sum to < (Z - 1) / Z < 1: the diagonal is positive by construction
        return off + torch.diag_embed(1 - off.sum(-1))


#: name -> process class
PROCESSES: Dict[str, type] = {
    UniformProcess.name: UniformProcess,
    AbsorbingProcess.name: AbsorbingProcess,
    DiscretizedGaussianProcess.name: DiscretizedGaussianProcess,
}


def build_process(name: str, num_classes: int, **options) -> DiscreteProcess:
    """Construct a forward process by name (`"uniform"`, `"absorbing"`, `"gaussian"`)."""
    check_choice("process", name, PROCESSES)
    return PROCESSES[name](num_classes, **options)
