"""A minimal training loop for x_0-predicting discrete diffusion models on the hybrid loss
(Austin et al. 2021, eq. 6; `losses.hybrid_loss`): Adam, a fixed number of steps, minibatches drawn
with replacement from a token tensor. Randomness comes from one generator."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .._validation import check_positive, check_positive_int
from .losses import hybrid_loss
from .processes import DiscreteProcess

__all__ = ["fit"]


def fit(process: DiscreteProcess, model: nn.Module, data: torch.Tensor, num_steps: int, batch_size: int = 128,
        lr: float = 1e-3, lambda_ce: float = 0.01, generator: Optional[torch.Generator] = None) -> List[float]:
    """Train `model` in place on `data` (N, *event) long tokens in [0, K); returns the loss of each step.

    Args:
        process: the forward process. model: `model(x_t, t) -> (B, *event, K)` logits.
        num_steps, batch_size, lr: of the Adam loop. lambda_ce: weight of the auxiliary cross-entropy.
        generator: randomness of the minibatches, the steps t and the noise.
    """
    data = process.check_data(data, "data")
    check_positive_int("num_steps", num_steps)
    check_positive_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(num_steps):
        idx = torch.randint(data.shape[0], (batch_size,), generator=generator,
                            device=generator.device if generator is not None else data.device).to(data.device)
        loss = hybrid_loss(process, model, data[idx], generator, lambda_ce=lambda_ce)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
