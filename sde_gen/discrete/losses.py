"""The D3PM variational bound, its hybrid training loss and the exact discrete ELBO (Austin et al. 2021).

Negative ELBO of one x_0 (D3PM eq. 5, in nats, summed over positions):

    -log p(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || p(x_T))                                  (prior term, no parameters)
    L_{t-1} = E_{q(x_t | x_0)} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
    L_0     = -E_{q(x_1 | x_0)} log p(x_0 | x_1)

with p(x_{t-1} | x_t) = sum_{x_0} q(x_{t-1} | x_t, x_0) p(x_0 | x_t) (`processes.posterior_probs`).
At t = 1 the posterior is the one-hot of x_0 (Qbar_0 = I), so L_0 is the same KL with a one-hot
target: one formula, `vb_term`, serves every t.

Hybrid loss (D3PM eq. 6): L_vb + lambda * E_t E_{q(x_t|x_0)} [-log p(x_0 | x_t)], lambda = 0.01.
Bits per dimension: nats / (L ln 2) with L the number of positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._validation import check_nonnegative
from .processes import DiscreteProcess

__all__ = ["vb_term", "prior_kl", "hybrid_loss", "HybridLoss", "nelbo", "ELBOResult", "check_model_output", "DISCRETE_LOSSES"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_model_output(out: torch.Tensor, x: torch.Tensor, num_classes: int) -> None:
    """The model's logits must be (B, *event, K) and floating point."""
    want = (*x.shape, num_classes)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model(x_t, t) must return floating x_0 logits of shape (B, *event, K) = {want}; got {got}")


def _kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of q log(q / p), with 0 log(0 / p) = 0 (float64).

    Entries with q = 0 (e.g. the states a revealed absorbing token cannot reach, where p = 0 too) add
    nothing to the value and nothing to the gradient (xlogy would give 0/0 = NaN there); p is clamped
    at 1e-300, so q > 0 with p = 0 costs about 690 nats instead of inf.
    """
    pos = q > 0
    terms = q * (torch.where(pos, q, 1.0).log() - p.clamp_min(1e-300).log())
    return torch.where(pos, terms, torch.zeros_like(terms)).sum(-1)


def prior_kl(process: DiscreteProcess, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || p(x_T)) summed over positions: (B,) nats."""
    x0 = process.check_data(x0)
    B = x0.shape[0]
    q = process.q_probs(x0, torch.full((B,), process.T, device=x0.device, dtype=torch.long))
    return _kl(q, process.stationary().to(x0.device)).reshape(B, -1).sum(1)


def vb_term(process: DiscreteProcess, logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
            t: torch.Tensor) -> torch.Tensor:
    """KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) summed over positions (L_0 = -log p(x_0 | x_1) at t = 1).

    Args:
        logits: (B, *event, K) model logits of p(x_0 | x_t).
        x0: (B, *event) data. x_t: (B, *event) noised tokens. t: (B,) long steps in [1, T].

    Returns:
        (B,) float64 nats.
    """
    K = process.num_classes
    onehot = torch.nn.functional.one_hot(x0, K).to(torch.float64)
    q = process.posterior_probs(x_t, onehot, t)
    p = process.posterior_probs(x_t, torch.softmax(logits.to(torch.float64), -1), t)
    return _kl(q, p).reshape(x0.shape[0], -1).sum(1)


def hybrid_loss(process: DiscreteProcess, model: Model, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                lambda_ce: float = 0.01) -> torch.Tensor:
    """D3PM's hybrid loss L_vb + lambda * CE at one uniform step t per sample (D3PM eq. 6).

    Both terms are averaged over positions (so the scale does not grow with L) and over the batch;
    T L times the batch mean of the L_vb part, plus L_T, is an unbiased estimate of the mean negative ELBO.

    Args:
        process: the forward process. model: `model(x_t, t) -> (B, *event, K)` logits.
        x0: (B, *event) long data in [0, K). generator: for t and x_t. lambda_ce: weight of the CE term.

    Returns:
        A 0-d tensor in the dtype of the logits.
    """
    lambda_ce = check_nonnegative("lambda_ce", lambda_ce)
    x0 = process.check_data(x0)
    B = x0.shape[0]
    dev = generator.device if generator is not None else x0.device
    t = torch.randint(1, process.T + 1, (B,), generator=generator, device=dev).to(x0.device)
    x_t = process.q_sample(x0, t, generator)
    logits = model(x_t, t)
    check_model_output(logits, x0, process.num_classes)
    L = x0[0].numel()
    vb = vb_term(process, logits, x0, x_t, t).to(logits.dtype) / L
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, process.num_classes), x0.reshape(-1), reduction="none")
    return (vb + lambda_ce * ce.reshape(B, -1).mean(1)).mean()


class HybridLoss:
    """`hybrid_loss` as the `loss:` node of the training app (`loss=d3pm_hybrid`): called by the training
    loop as `loss(model, process, x0, generator)`.

    Args:
        lambda_ce: weight of the auxiliary cross-entropy (D3PM's 0.01; 0 trains on L_vb alone).
    """

    #: what the loss trains: the training app pairs it with a discrete process and an x_0-logit network
    trains = "discrete"

    def __init__(self, lambda_ce: float = 0.01):
        self.lambda_ce = check_nonnegative("lambda_ce", lambda_ce)

    def __call__(self, model: Model, process: DiscreteProcess, x0: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return hybrid_loss(process, model, x0, generator, lambda_ce=self.lambda_ce)

    def __repr__(self) -> str:
        return f"HybridLoss(lambda_ce={self.lambda_ce})"


#: config name -> discrete loss class (the `loss/` options of the training app)
DISCRETE_LOSSES = {"d3pm_hybrid": HybridLoss}


@dataclass
class ELBOResult:
    """The negative ELBO of each sample, by term (nats, (B,) float64), and in bits per dimension."""

    prior: torch.Tensor
    diffusion: torch.Tensor
    reconstruction: torch.Tensor
    nats: torch.Tensor
    bits_per_dim: torch.Tensor
    nfe: int


def nelbo(process: DiscreteProcess, model: Model, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> ELBOResult:
    """The negative discrete ELBO of each x_0 with every one of the T terms (D3PM eq. 5).

    Each L_{t-1} is evaluated at one draw x_t ~ q(x_t | x_0) (an unbiased estimate of the expectation;
    the KL inside is exact), so the result is an unbiased estimate of -ELBO(x_0) >= -log p(x_0).
    Costs T model calls (nfe).

    Args:
        x0: (B, *event) long data in [0, K). model: `model(x_t, t) -> (B, *event, K)` logits.

    Returns:
        An `ELBOResult`; bits_per_dim = nats / (L ln 2), L the number of positions.
    """
    x0 = process.check_data(x0)
    B, L = x0.shape[0], x0[0].numel()
    prior = prior_kl(process, x0)
    diffusion = torch.zeros(B, dtype=torch.float64, device=x0.device)
    reconstruction = torch.zeros_like(diffusion)
    with torch.no_grad():
        for step in range(process.T, 0, -1):
            t = torch.full((B,), step, dtype=torch.long, device=x0.device)
            x_t = process.q_sample(x0, t, generator)
            logits = model(x_t, t)
            if step == process.T:
                check_model_output(logits, x0, process.num_classes)
            term = vb_term(process, logits, x0, x_t, t)
            if step == 1:
                reconstruction = term
            else:
                diffusion = diffusion + term
    nats = prior + diffusion + reconstruction
    return ELBOResult(prior, diffusion, reconstruction, nats, nats / (L * math.log(2)), nfe=process.T)
