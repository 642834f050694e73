"""Samplers for discrete diffusion, with the continuous samplers' conventions: a keyword dataclass
with an NFE budget (one call of `model(x_t, t)` on the batch = 1 NFE), a base class that owns the
prior draw, `torch.no_grad`, the generator, the call count and the callback, and a `SampleResult`.

    d3pm_ancestral  x_s ~ p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t) on the integer grid
                    T = t_0 > t_1 > ... > t_N = 0 (uniform, N = nfe); a skipped range uses
                    Q_{s->t} = Q_{s+1} ... Q_t (Austin et al. 2021, eq. 3 and section 3.3)
    maskgit         confidence-ordered parallel decoding for the absorbing process (Chang et al. 2022,
                    section 3.2): at step i, draw every masked token from p(x_0 | x_t) / temperature,
                    keep masked the floor(gamma((i+1)/N) L) least confident of them (confidence =
                    log-probability of the drawn token + choice_temperature (1 - (i+1)/N) Gumbel noise),
                    gamma(r) = cos(pi r / 2) (or 1 - r); at least one token is revealed per step

The model is `model(x_t, t) -> (B, *event, K)` logits of p(x_0 | x_t) with x_t long tokens and t a (B,)
long tensor of steps; `CategoricalMixture.denoiser(process)` is the exact one.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

from .._validation import check_choice, check_nonnegative, check_positive, check_positive_int
from ..samplers.base import SampleResult
from .losses import check_model_output
from .processes import DiscreteProcess, check_tokens, posterior_probs, sample_categorical

__all__ = ["DiscreteSampler", "D3PMAncestral", "MaskGIT", "DISCRETE_SAMPLERS", "build_discrete_sampler",
           "sample_discrete", "CountingModel", "step_grid"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]


class CountingModel:
    """Wraps `model`: counts calls (a Python int) and checks the first output's shape."""

    def __init__(self, model: Model, num_classes: int):
        self.model = model
        self.num_classes = num_classes
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.model(x, t)
        if self.calls == 1:
            check_model_output(out, x, self.num_classes)
        return out


def step_grid(num_timesteps: int, num_steps: int) -> List[int]:
    """The integer grid T = t_0 > ... > t_N = 0 of N = num_steps nearly equal strides (N <= T)."""
    T, N = check_positive_int("num_timesteps", num_timesteps), check_positive_int("num_steps", num_steps)
    if N > T:
        raise ValueError(f"num_steps must be <= T = {T} (one network call per step); got {N}")
    return [round(T * (N - i) / N) for i in range(N + 1)]


@dataclass(eq=False)
class DiscreteSampler(ABC):
    """Base class: the budget, the prior, no_grad, the generator, NFE counting, the callback.

    Args:
        nfe: number of model calls (= steps).
    """

    name: ClassVar[str] = ""

    nfe: int = 100
    _: KW_ONLY

    def __post_init__(self):
        self.nfe = check_positive_int("nfe", self.nfe)

    def check_process(self, process: DiscreteProcess) -> None:
        """Raise a clear error if this sampler cannot run `process` (default: all)."""

    @abstractmethod
    def solve(self, process: DiscreteProcess, model: CountingModel, x: torch.Tensor,
              generator: Optional[torch.Generator], callback: Optional[Callback]) -> Tuple[torch.Tensor, int]:
        """Carry x from t = T to x_0; return (x_0, steps taken)."""

    def __call__(self, process: DiscreteProcess, model: Model, shape: Optional[Sequence[int]] = None,
                 x_T: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 callback: Optional[Callback] = None, device=None) -> SampleResult:
        """Draw samples (B, *event) long from `shape` (prior draw) or from `x_T`.

        Args:
            process: the forward process. model: `model(x_t, t) -> (B, *event, K)` logits.
            shape: (B, *event), or give `x_T` (long tokens in [0, S)).
            generator: randomness. callback: `callback(i, t_next, x)` after step i.
            device: of the prior draw (None: the generator's).

        Returns:
            `SampleResult(samples, nfe, num_steps)`.
        """
        self.check_process(process)
        if (shape is None) == (x_T is None):
            raise ValueError("give exactly one of shape (to start from the prior) or x_T")
        if x_T is None:
            if len(shape) < 2:
                raise ValueError(f"shape must be (B, *event) with at least one position; got {tuple(shape)}")
            x = process.prior_sample(shape, generator, device)
        else:
            x = check_tokens(x_T, process.num_states, "x_T")
        counted = CountingModel(model, process.num_classes)
        with torch.no_grad():
            x, steps = self.solve(process, counted, x, generator, callback)
        return SampleResult(samples=x, nfe=counted.calls, num_steps=steps)


@dataclass(eq=False)
class D3PMAncestral(DiscreteSampler):
    """Ancestral sampling x_s ~ p(x_s | x_t) on a uniform integer sub-grid of N = nfe steps."""

    name: ClassVar[str] = "d3pm_ancestral"

    def solve(self, process, model, x, generator, callback):
        grid = step_grid(process.T, self.nfe)
        B, dev = x.shape[0], x.device
        flat = x.reshape(B, -1)
        ts = torch.tensor(grid, dtype=torch.long, device=dev)
        Qbar = process.cumulative_matrix(ts)  # (N + 1, S, S), once per run
        Q_st = [process.transition_matrix(s, t).to(dev) for t, s in zip(grid[:-1], grid[1:])]
        for i in range(self.nfe):
            t_vec = ts[i].expand(B)
            logits = model(flat.reshape(x.shape), t_vec)
            x0_probs = torch.softmax(logits.to(torch.float64), -1).reshape(B, flat.shape[1], -1)
            p = posterior_probs(flat, x0_probs, Q_st[i], Qbar[i + 1], Qbar[i])
            flat = sample_categorical(p, generator)
            if callback is not None:
                callback(i, grid[i + 1], flat.reshape(x.shape))
        return flat.reshape(x.shape), self.nfe


MASK_SCHEDULES = ("cosine", "linear")


@dataclass(eq=False)
class MaskGIT(DiscreteSampler):
    """Confidence-ordered parallel decoding for the absorbing process (Chang et al. 2022).

    Args:
        nfe: decoding steps (<= number of positions; each reveals at least one token).
        temperature: of the token draws, p(x_0 | x_t)^(1 / temperature) (> 0).
        choice_temperature: scale of the Gumbel noise on the confidences (0: pure confidence order;
            large: random order), annealed linearly to 0.
        mask_schedule: "cosine" (gamma(r) = cos(pi r / 2)) or "linear" (1 - r).
    """

    name: ClassVar[str] = "maskgit"

    temperature: float = 1.0
    choice_temperature: float = 0.0
    mask_schedule: str = "cosine"

    def __post_init__(self):
        self.temperature = check_positive("temperature", self.temperature)
        self.choice_temperature = check_nonnegative("choice_temperature", self.choice_temperature)
        check_choice("mask_schedule", self.mask_schedule, MASK_SCHEDULES)
        super().__post_init__()

    def check_process(self, process: DiscreteProcess) -> None:
        if process.mask_index is None:
            raise ValueError(f"sampler 'maskgit' needs a process with a mask token (process='absorbing'); "
                             f"got {type(process).__name__}")

    def gamma(self, r: torch.Tensor) -> torch.Tensor:
        """The fraction of tokens still masked after a fraction r of the steps."""
        return torch.cos(math.pi / 2 * r) if self.mask_schedule == "cosine" else 1 - r

    def solve(self, process, model, x, generator, callback):
        B, dev, N, m = x.shape[0], x.device, self.nfe, process.mask_index
        flat = x.reshape(B, -1)
        L = flat.shape[1]
        if N > L:
            raise ValueError(f"nfe must be <= the number of positions L = {L} for sampler 'maskgit'; got {N}")
        r = torch.arange(N + 1, dtype=torch.float64) / N
        masked_after = torch.floor(self.gamma(r[1:]) * L).long()  # (N,) target counts
        masked_after[-1] = 0
        # for the callback only (the step matching the target count), on the host, before the loop
        t_next = [min(t, process.T - 1) if c > 0 else 0 for t, c in
                  zip(process.time_for_mask_ratio(masked_after.to(torch.float64) / L).tolist(), masked_after.tolist())]
        masked_after = masked_after.to(dev)
        gen_dev = generator.device if generator is not None else dev
        for i in range(N):
            masked = flat == m
            # the model sees the step whose mask probability is the row's masked fraction; a row with a
            # revealed token is impossible at abar_T = 0, so such rows get at most T - 1
            ratio = masked.to(torch.float64).mean(1)
            t = process.time_for_mask_ratio(ratio)
            t = torch.where(ratio < 1, t.clamp(max=max(process.T - 1, 1)), t)
            logits = model(flat.reshape(x.shape), t).reshape(B, L, -1)
            logp = torch.log_softmax(logits.to(torch.float64) / self.temperature, -1)
            drawn = sample_categorical(logp.exp(), generator)
            conf = torch.gather(logp, 2, drawn[..., None])[..., 0]
            if self.choice_temperature > 0:
                u = torch.rand(B, L, generator=generator, device=gen_dev, dtype=torch.float64).to(dev)
                gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
                conf = conf + self.choice_temperature * (1 - (i + 1) / N) * gumbel
            conf = conf.masked_fill(~masked, math.inf)
            n_masked = masked.sum(1)
            keep = torch.minimum(masked_after[i].expand(B), n_masked - 1).clamp_min(0)  # reveal >= 1
            rank = torch.argsort(torch.argsort(conf, dim=1), dim=1)  # 0 = least confident
            remask = rank < keep[:, None]
            flat = torch.where(masked & ~remask, drawn, flat)
            if callback is not None:
                callback(i, t_next[i], flat.reshape(x.shape))
        return flat.reshape(x.shape), N


#: name -> discrete sampler class
DISCRETE_SAMPLERS: Dict[str, type] = {
    D3PMAncestral.name: D3PMAncestral,
    MaskGIT.name: MaskGIT,
}


def build_discrete_sampler(name: str, **options) -> DiscreteSampler:
    """Construct a discrete sampler by name with its options (e.g. `nfe=16`)."""
    check_choice("sampler", name, DISCRETE_SAMPLERS)
    return DISCRETE_SAMPLERS[name](**options)


def sample_discrete(process: DiscreteProcess, model: Model, shape: Optional[Sequence[int]] = None,
                    sampler: str = "d3pm_ancestral", nfe: int = 100, generator: Optional[torch.Generator] = None,
                    x_T: Optional[torch.Tensor] = None, callback: Optional[Callback] = None, device=None,
                    **options) -> SampleResult:
    """Sample with a named discrete sampler in one call (see `DISCRETE_SAMPLERS`)."""
    return build_discrete_sampler(sampler, nfe=nfe, **options)(
        process, model, shape=shape, x_T=x_T, generator=generator, callback=callback, device=device)
