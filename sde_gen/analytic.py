"""Analytic-DPM: the KL-optimal reverse variance of a Gaussian reverse chain, from the score's
expected squared norm (Bao, Li, Zhu & Zhang 2022, "Analytic-DPM", Thm. 1 and 2).

For a step t -> u < t of the family q(x_u | x_t, x_0) = N(c_t x_t + c_0 x_0, lambda^2 I) (the DDPM
posterior for eta = 1, DDIM's eq. 16 family for eta < 1), the Gaussian reverse kernel
p(x_u | x_t) = N(mu(x_t), sigma^2 I) that minimises KL(q || p) matches moments:

    mu*     = c_t x_t + c_0 E[x_0 | x_t],        E[x_0 | x_t] = (x_t + s_t^2 score) / a_t   (Tweedie),
    sigma*^2 = lambda^2 + c_0^2 E tr Cov[x_0 | x_t] / d
             = lambda^2 + c_0^2 (s_t / a_t)^2 (1 - s_t^2 Gamma_t),     Gamma_t = E ||score(x_t)||^2 / d,

using E||x_0 - E[x_0|x_t]||^2 = (s_t / a_t)^2 (d - s_t^2 E||score||^2) (since E[z | x_t] = -s_t score).
For the VP chain this is Bao et al.'s eq. (7) with alpha_bar_n = a_t^2, beta_bar_n = s_t^2. With an
estimated score the bracket can leave [0, 1]; Thm. 2's bounds lambda^2 <= sigma^2 <= lambda^2 +
c_0^2 (s_t / a_t)^2 are enforced by clipping it to [0, 1] (`clip=True`). Gamma_t is estimated once per
model and grid by Monte Carlo over data (`estimate_gamma`, Bao et al. Alg. 1).

The decoder step t_min -> 0 is the case u = 0: lambda = 0, c_0 = 1.

Extended Analytic-DPM (Bao, Li, Sun, Zhu & Zhang 2022b, "Estimating the Optimal Covariance with
Imperfect Mean", eq. 10 with a state-independent diagonal covariance): per dimension i, the
reverse variance that maximises the chain's ELBO for the model's own mean x0_hat is

    sigma_i^2 = lambda^2 + c_0^2 E (x_{0,i} - x0_hat_i)^2 = lambda^2 + c_0^2 (s_t / a_t)^2 R_{t,i},
    R_{t,i} = E (z_i + s_t score_i(x_t, t))^2       (the noise-prediction residual, eps_hat = -s_t score),

since x_0 - x0_hat = -(s_t / a_t)(z + s_t score). It is non-negative by construction and needs no
clipping; with the exact score R_{t,i} = 1 - s_t^2 E score_i^2 (by E[z | x_t] = -s_t score), the
per-dimension version of Gamma_t, so for data with a non-isotropic covariance it is the exact
diagonal optimum where the scalar sigma*^2 only matches the average. `estimate_residual` fits R_t
by Monte Carlo, like `estimate_gamma`.

Both estimates cost M * N score evaluations and depend only on (model, SDE, data, grid, draws): with
`cache_dir` they are saved there (e.g. next to the run or the checkpoint) under a SHA-256 key of those
inputs, and a second call with the same inputs loads the table instead of recomputing it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ._validation import check_positive_int
from .sdes import SDE
from .io import atomic_path
from .utils import append_dims, batch_sum, event_numel

__all__ = ["GammaTable", "estimate_gamma", "estimate_residual", "analytic_variance", "extended_variance",
           "step_coefficients", "module_fingerprint", "table_key"]


@dataclass(frozen=True)
class GammaTable:
    """A Monte-Carlo table over times, callable on any times by interpolation: Gamma_t = E ||score||^2 / d
    (`estimate_gamma`, shape (N,)) or the per-dimension residual R_t (`estimate_residual`, (N, *event)).

    Attributes:
        t: (N,) increasing float64 times.
        gamma: (N,) or (N, *event) float64 values at `t`.

    Calling `table(t)` with (M,) times returns (M,) (or (M, *event)) values, linearly interpolated in
    log t (clamped to the end values outside [t[0], t[-1]]); at the stored times it returns them exactly.
    """

    t: torch.Tensor
    gamma: torch.Tensor

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        ts, gs = self.t.to(t.device), self.gamma.to(t.device)
        q = t.to(torch.float64).clamp(float(self.t[0]), float(self.t[-1]))
        if ts.numel() == 1:
            return gs.expand(q.shape + gs.shape[1:]).clone()
        idx = torch.searchsorted(ts, q).clamp(1, ts.numel() - 1)
        lo, hi = ts[idx - 1], ts[idx]
        w = ((torch.log(q) - torch.log(lo)) / (torch.log(hi) - torch.log(lo))).clamp(0.0, 1.0)
        # torch.lerp is exact at both ends (w = 0 and w = 1), so the stored times give the stored values
        return torch.lerp(gs[idx - 1], gs[idx], append_dims(w, gs.ndim))

    def save(self, path: str, key: str = "") -> None:
        """Write the table (and the cache `key` it was computed for) to `path` atomically."""
        with atomic_path(path) as tmp:
            torch.save({"t": self.t.cpu(), "gamma": self.gamma.cpu(), "key": key}, tmp)

    @classmethod
    def load(cls, path: str, key: Optional[str] = None) -> "GammaTable":
        """Read a table written by `save`; with `key`, one ValueError if it was computed for other inputs."""
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if key is not None and stored.get("key") != key:
            raise ValueError(f"the GammaTable at {path!r} was computed for other inputs (key {stored.get('key')!r}, "
                             f"wanted {key!r})")
        return cls(stored["t"], stored["gamma"])


def _hash_tensor(h, tensor: torch.Tensor) -> None:
    tensor = tensor.detach()
    h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    h.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())


def _hash_module(h, module: nn.Module) -> None:
    """The class, every parameter and buffer, and the plain scalar attributes (an SDE's T, eps, ...)."""
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        _hash_tensor(h, tensor)
    for name, value in sorted(vars(module).items()):
        if isinstance(value, (bool, int, float, str)) and name != "training":
            h.update(f"{name}={value!r}".encode())


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's class, weights, buffers and plain scalar attributes (a cache key for a
    model wrapped in a closure, e.g. `estimate_gamma(..., cache_key=module_fingerprint(model))`)."""
    h = hashlib.sha256()
    _hash_module(h, module)
    return h.hexdigest()


def table_key(kind: str, score_fn, sde: SDE, data: torch.Tensor, t_grid: torch.Tensor, num_repeats: int,
              batch_size: int, generator: Optional[torch.Generator], model_key: Optional[str] = None) -> str:
    """SHA-256 of everything a Monte-Carlo table depends on (`estimate_gamma`'s cache).

    The model enters by its weights when `score_fn` is an `nn.Module` (or a method of one); any other
    callable (an oracle's closure) needs an explicit `model_key` naming it. The generator enters by its
    state at the call (None: the global generator, not part of the key).
    """
    h = hashlib.sha256(f"{kind};repeats={num_repeats};batch={batch_size};".encode())
    owner = getattr(score_fn, "__self__", None)
    if model_key is not None:
        h.update(f"model_key={model_key}".encode())
    elif isinstance(score_fn, nn.Module):
        _hash_module(h, score_fn)
    elif isinstance(owner, nn.Module):
        _hash_module(h, owner)
        h.update(getattr(score_fn, "__name__", "").encode())
    else:
        raise ValueError("cache_key must name the model (a string) when score_fn is not an nn.Module or a method of "
                         f"one: its weights cannot be read to key the cache; got score_fn={score_fn!r}")
    _hash_module(h, sde)
    _hash_tensor(h, data)
    _hash_tensor(h, torch.sort(t_grid.to(torch.float64).flatten()).values)
    h.update(b"global" if generator is None else generator.get_state().numpy().tobytes())
    return h.hexdigest()


def _cached(kind, score_fn, sde, data, t_grid, num_repeats, batch_size, generator, cache_dir, model_key):
    """The table from `cache_dir` if it holds one for these inputs, else computed (and saved there)."""
    num_repeats = check_positive_int("num_repeats", num_repeats)
    batch_size = check_positive_int("batch_size", batch_size)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (M, *event) with M >= 1; got {tuple(data.shape)}")
    if cache_dir is None:
        return _monte_carlo_table(score_fn, sde, data, t_grid, num_repeats, batch_size, generator, kind == "residual")
    key = table_key(kind, score_fn, sde, data, t_grid, num_repeats, batch_size, generator, model_key)
    path = os.path.join(os.fspath(cache_dir), f"{kind}_{key[:24]}.pt")
    if os.path.exists(path):
        return GammaTable.load(path, key)
    table = _monte_carlo_table(score_fn, sde, data, t_grid, num_repeats, batch_size, generator, kind == "residual")
    table.save(path, key)
    return table


def estimate_gamma(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    data: torch.Tensor,
    t_grid: torch.Tensor,
    num_repeats: int = 1,
    batch_size: int = 4096,
    generator: Optional[torch.Generator] = None,
    cache_dir: Optional[str] = None,
    cache_key: Optional[str] = None,
) -> GammaTable:
    """Monte-Carlo estimate of Gamma_t = E_{x_0, z} ||score(a(t) x_0 + s(t) z, t)||^2 / d (Bao et al. 2022, Alg. 1).

    Args:
        score_fn: `score_fn(x, t)` (a trained model or an oracle's exact score).
        sde: the forward SDE.
        data: (M, *event) data points x_0 (e.g. a training batch).
        t_grid: (N,) times (any order), e.g. a sampler's or `elbo`'s grid.
        num_repeats: noise draws per data point and time (M * num_repeats samples per time).
        batch_size: score evaluations per call.
        generator: randomness of z.
        cache_dir: a folder (e.g. the run's) where the table is saved under a key of all the inputs
            above; a later call with the same inputs loads it and evaluates nothing (nor draws from
            `generator`). None: no cache.
        cache_key: a name for the model in the key, needed with `cache_dir` when `score_fn` is not an
            `nn.Module` or a method of one (an `nn.Module` is keyed by its weights).

    Returns:
        a `GammaTable` over the sorted times: M * num_repeats * N score evaluations, done once per
        model and grid and reused by `elbo` and the samplers.
    """
    return _cached("gamma", score_fn, sde, data, t_grid, num_repeats, batch_size, generator, cache_dir, cache_key)


def estimate_residual(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    data: torch.Tensor,
    t_grid: torch.Tensor,
    num_repeats: int = 1,
    batch_size: int = 4096,
    generator: Optional[torch.Generator] = None,
    cache_dir: Optional[str] = None,
    cache_key: Optional[str] = None,
) -> GammaTable:
    """Monte-Carlo estimate of the per-dimension residual R_{t,i} = E (z_i + s_t score_i(x_t, t))^2 of
    Extended Analytic-DPM (module docstring; Bao et al. 2022b), x_t = a(t) x_0 + s(t) z.

    Args: as `estimate_gamma`.

    Returns:
        a `GammaTable` whose values have shape (N, *event): the fitted per-dimension residual on the
        sorted times, for `variance="analytic_extended"` (`extended_variance`, `elbo`, the samplers).
    """
    return _cached("residual", score_fn, sde, data, t_grid, num_repeats, batch_size, generator, cache_dir, cache_key)


def _monte_carlo_table(score_fn, sde, data, t_grid, num_repeats, batch_size, generator, per_dimension) -> GammaTable:
    """E ||score||^2 / d (per_dimension=False) or E (z + s score)^2 per dimension, on the sorted times."""
    ts = torch.sort(t_grid.to(torch.float64).flatten()).values
    x_all = data.repeat_interleave(num_repeats, dim=0) if num_repeats > 1 else data
    d = event_numel(data)
    out = torch.empty((ts.numel(),) + (tuple(data.shape[1:]) if per_dimension else ()), dtype=torch.float64,
                      device=data.device)
    with torch.no_grad():
        for j, t_val in enumerate(ts.tolist()):
            total = torch.zeros(out.shape[1:], dtype=torch.float64, device=data.device)
            for x0 in torch.split(x_all, batch_size):
                t = torch.full((x0.shape[0],), t_val, dtype=x0.dtype, device=x0.device)
                z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                score = score_fn(sde.perturb(x0, t, z), t).to(torch.float64)
                if per_dimension:
                    s_t = append_dims(sde.marginal_coeffs(t)[1].to(torch.float64), score.ndim)
                    total = total + ((z.to(torch.float64) + s_t * score) ** 2).sum(0)
                else:
                    total = total + batch_sum(score ** 2).sum()
            out[j] = total / (x_all.shape[0] * (1 if per_dimension else d))
    return GammaTable(ts.cpu(), out.cpu())


def step_coefficients(sde: SDE, t: torch.Tensor, u: torch.Tensor, eta: float = 1.0) -> Tuple[torch.Tensor, ...]:
    """(c_t, c_0, lambda^2) of q(x_u | x_t, x_0) = N(c_t x_t + c_0 x_0, lambda^2 I), u < t, all like `t`.

    eta = 1: the posterior of the Markov chain (`SDE.posterior`): c_t = a_{t|u} s_u^2 / s_t^2,
    c_0 = a_u v_{t|u} / s_t^2, lambda^2 = v_{t|u} s_u^2 / s_t^2. eta in [0, 1): DDIM's family (Song,
    Meng & Ermon 2021, eq. 7) with lambda = eta * (the posterior std): c_t = sqrt(s_u^2 - lambda^2) / s_t,
    c_0 = a_u - c_t a_t. u = 0 (the decoder) gives c_t = 0, c_0 = 1, lambda = 0.
    """
    ratio, v = sde.transition_coeffs(u, t)
    var_t, var_u = sde.marginal_var(t), sde.marginal_var(u)
    a_t, a_u = sde.mean_coeff(t), sde.mean_coeff(u)
    lam2 = v * var_u / var_t
    if eta == 1.0:
        return ratio * var_u / var_t, a_u * v / var_t, lam2
    lam2 = eta ** 2 * lam2
    c_t = torch.sqrt((var_u - lam2).clamp_min(0.0) / var_t)
    return c_t, a_u - c_t * a_t, lam2


def analytic_variance(
    sde: SDE, t: torch.Tensor, u: torch.Tensor, gamma: torch.Tensor, eta: float = 1.0, clip: bool = True
) -> torch.Tensor:
    """The KL-optimal reverse variance sigma*^2 of the step t -> u (module docstring), shape like `t`.

    Args:
        sde: the forward SDE. t, u: (N,) times with u < t (u = 0 allowed: the decoder).
        gamma: (N,) Gamma_t = E||score(x_t, t)||^2 / d (`estimate_gamma`, or a closed form).
        eta: 1 for the DDPM chain, < 1 for DDIM's family.
        clip: clip 1 - s_t^2 Gamma_t to [0, 1] (Bao et al. 2022, Thm. 2); without it an estimated
            Gamma can give a variance below lambda^2 or even a negative one.
    """
    _, c_0, lam2 = step_coefficients(sde, t, u, eta)
    a_t, s_t = sde.marginal_coeffs(t)
    bracket = 1.0 - s_t ** 2 * gamma.to(t.dtype)
    if clip:
        bracket = bracket.clamp(0.0, 1.0)
    return lam2 + c_0 ** 2 * (s_t / a_t) ** 2 * bracket


def extended_variance(sde: SDE, t: torch.Tensor, u: torch.Tensor, residual: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Extended Analytic-DPM's per-dimension reverse variance of the step t -> u (module docstring).

    Args:
        sde: the forward SDE. t, u: (N,) times with u < t (u = 0 allowed: the decoder).
        residual: (N, *event) R_{t,i} = E (z_i + s_t score_i)^2 (`estimate_residual`, or a closed form).
        eta: 1 for the DDPM chain, < 1 for DDIM's family.

    Returns:
        (N, *event) variances sigma_i^2 = lambda^2 + c_0^2 (s_t / a_t)^2 R_{t,i} >= lambda^2 (R is
        clamped at 0, so a rounding error cannot make it smaller).
    """
    _, c_0, lam2 = step_coefficients(sde, t, u, eta)
    a_t, s_t = sde.marginal_coeffs(t)
    nd = residual.ndim
    scale = append_dims(c_0 ** 2 * (s_t / a_t) ** 2, nd)
    return append_dims(lam2, nd) + scale * residual.to(t.dtype).clamp_min(0.0)
