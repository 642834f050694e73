"""A small transformer that predicts x_0 logits from noised tokens: the D3PM x_0-parameterisation
(Austin et al. 2021, section 3.3: the network outputs p~(x_0 | x_t); `posterior_probs` turns it into the
reverse kernel).

    h_l = E_tok[x_t^l] + E_pos[l] + emb(t / T)         (token, learned position and time embeddings;
                                                        the time embedding is the library's `TimeEmbedding`)
    h   = TransformerEncoder(h)                        (pre-norm, bidirectional attention over positions)
    logits_l = Linear(LayerNorm(h_l)) in R^K           (x_0 logits per position; the mask is never predicted)

The network is built with explicit keyword arguments and works on x (B, *event) with prod(event) = L.
"""
from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_int
from ..nets.fourier import TimeEmbedding

__all__ = ["TokenTransformer", "DISCRETE_NETS", "DISCRETE_SHAPE_ARGS", "build_discrete_model"]


class TokenTransformer(nn.Module):
    """x_0 logits (B, *event, K) from tokens x_t (B, *event) in [0, S) and steps t (B,) in [0, T].

    Args:
        num_states: S input states (K, or K + 1 with a mask token).
        num_classes: K output categories.
        num_positions: L = prod(event).
        num_timesteps: T (t is fed as t / T).
        width, depth, heads: of the encoder.
    """

    def __init__(self, *, num_states: int, num_classes: int, num_positions: int, num_timesteps: int,
                 width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.num_states = check_positive_int("num_states", num_states)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_positions = check_positive_int("num_positions", num_positions)
        self.num_timesteps = check_positive_int("num_timesteps", num_timesteps)
        width, depth, heads = (check_positive_int(n, v) for n, v in (("width", width), ("depth", depth), ("heads", heads)))
        if width % heads:
            raise ValueError(f"width must be a multiple of heads = {heads}; got {width}")
        self.tokens = nn.Embedding(num_states, width)
        self.positions = nn.Parameter(torch.randn(num_positions, width) * 0.02)
        self.time = TimeEmbedding(width, fourier_scale=1.0)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        flat = x_t.reshape(B, -1)
        if flat.shape[1] != self.num_positions:
            raise ValueError(f"x_t must hold num_positions = {self.num_positions} tokens per sample; got {flat.shape[1]}")
        s = (t.to(self.positions.dtype) / self.num_timesteps)
        h = self.tokens(flat) + self.positions[None] + self.time(s)[:, None, :]
        return self.head(self.encoder(h)).reshape(*x_t.shape, self.num_classes)


#: config name -> x_0-logit network class (the `model/` options of discrete runs)
DISCRETE_NETS = {"token_transformer": TokenTransformer}
#: constructor arguments filled in from the process and the data, never from the config
DISCRETE_SHAPE_ARGS = ("num_states", "num_classes", "num_positions", "num_timesteps")


def build_discrete_model(model_cfg, process, event_shape) -> nn.Module:
    """The network of a `model:` node naming a class of `DISCRETE_NETS` (looked up, never imported), with
    S, K and T from `process` and L = prod(event_shape) from the data.

    Raises:
        ConfigError naming `model._target_` for any other class, or the option a constructor refuses.
    """
    import math

    from ..config import ConfigError, instantiate, target_names

    known = {name: cls for cls in DISCRETE_NETS.values() for name in target_names(cls)}
    target = model_cfg.get("_target_")
    if target not in known:
        raise ConfigError(f"model._target_: {target!r} is not a discrete-diffusion network (registered: {sorted(known)}); "
                          "a discrete process (sde=d3pm_*) needs model=token_transformer")
    return instantiate(model_cfg, "model", num_states=process.num_states, num_classes=process.num_classes,
                       num_positions=int(math.prod(event_shape)), num_timesteps=process.T)
