"""Linear inverse problems y = A x_0 + e, e ~ N(0, sigma_y^2 I), solved with an unconditional score.

Measurement models (each a linear map A of shape (m, D) on the flattened data, with its own
orthonormal basis V = [V_k, V_u] of R^D in which x splits into a *known* part c_k = V_k^T x, fixed by
y, and an *unknown* part c_u = V_u^T x with A V_u = 0):

    Inpainting(mask)        y = x[mask]; V is the coordinate basis (Song et al. 2021, App. I.2)
    Colorization(shape)     y = the gray image (mean of the 3 channels); V applies, per pixel, the
                            fixed orthogonal colour transform whose first row is (1, 1, 1) / sqrt(3)
                            (Song et al. 2021, App. I.3): the gray channel is known, the other two not
    LinearMeasurement(A)    any A; V from its SVD A = U diag(S) V_k^T. Built-in examples:
                            `super_resolution` (average pooling) and `random_projection`

Conditioning methods (objects given to a grid sampler as `condition=...`, so every sampler of the
library and every unconditional score gains them; see `sde_gen.samplers.base`):

    Replacement   after every solver step, the known part is replaced by a forward-noised copy
                  a(t) c_k(y) + s(t) z of the observation (Song et al. 2021, App. I.2, eq. 48 ff.)
    RePaint       replacement with resampling: after every `jump_length` steps jump back by the
                  forward kernel x_t' ~ N(a_{t'|t} x_t, v_{t'|t} I) and redo them, `resamplings`
                  times in all (Lugmayr et al. 2022, Alg. 1); every redone step is paid for in NFE
    DPS           diffusion posterior sampling (Chung et al. 2023, Alg. 1 and eq. 16): the score plus
                  the gradient of log N(y; A x0_hat(x_t), r_t^2 I), x0_hat by Tweedie's formula,
                  the gradient through the score by autograd
    TweedieMoment Tweedie-moment posterior sampling (Boys et al. 2023, TMPD; Song et al. 2023, PiGDM):
                  p(x_0 | x_t) ~ N(x0_hat, C_t) with C_t = (s^2 / a) d x0_hat / d x_t (Tweedie's second-
                  order identity) from vector-Jacobian products, each paid for in NFE; exact for Gaussian data
    ExactConditional   the oracle: the exact score of p_t(x_t | y), i.e. of the exact posterior
                  (`GaussianMixture.condition`) diffused by the SDE: the reference for the others

For a noise-free measurement every method ends with the data-consistency projection (the known
part set to c_k(y)), so known coordinates equal the observation exactly.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ._validation import check_nonnegative, check_positive, check_positive_int
from .utils import append_dims

__all__ = [
    "LinearMeasurement",
    "Inpainting",
    "Colorization",
    "Replacement",
    "RePaint",
    "DPS",
    "TweedieMoment",
    "ExactConditional",
    "CONDITIONS",
    "build_condition",
    "MASKS",
    "mask_preset",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _float64_matrix(name: str, value) -> torch.Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be an (m, D) array of real numbers; got {value!r}") from err
    if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] < 1:
        raise ValueError(f"{name} must be an (m, D) matrix with m, D >= 1; got shape {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite; got non-finite entries")
    return out


class LinearMeasurement:
    """y = A x + e, e ~ N(0, noise_std^2 I), on the flattened data x of dimension D.

    Args:
        A: (m, D) matrix, D the data dimension (its number of columns).
        noise_std: sigma_y >= 0. With 0, A must have full row rank (y fixes c_k = S^-1 U^T y).

    The SVD A = U diag(S) V_k^T (rank r) gives the basis: c_k = V_k^T x (r known coordinates),
    c_u = V_u^T x (D - r unknown ones). With noise, c_k(y) = S^-1 U^T y is the least-squares
    estimate (it still carries the noise).
    """

    def __init__(self, A, noise_std: float = 0.0):
        self.A = _float64_matrix("A", A)
        self.noise_std = check_nonnegative("noise_std", noise_std)
        U, S, Vh = torch.linalg.svd(self.A, full_matrices=True)
        tol = S.max() * max(self.A.shape) * torch.finfo(torch.float64).eps
        r = int((S > tol).sum())
        if r == 0:
            raise ValueError("A must have at least one non-zero singular value; got the zero matrix")
        if self.noise_std == 0 and r < self.A.shape[0]:
            raise ValueError(f"A must have full row rank (rank = m = {self.A.shape[0]}) when noise_std = 0 "
                             f"(allowed: a noisy measurement, noise_std > 0, for rank-deficient A); got rank {r}")
        self._U, self._S, self._V = U[:, :r], S[:r], Vh.T
        self._r = r

    # ---- sizes ----
    @property
    def dim(self) -> int:
        """D, the data dimension."""
        return self.A.shape[1]

    @property
    def num_observations(self) -> int:
        """m, the length of y."""
        return self.A.shape[0]

    @property
    def num_known(self) -> int:
        """r, the number of known coordinates (the rank of A)."""
        return self._r

    def matrix(self) -> torch.Tensor:
        """A as a (m, D) float64 tensor."""
        return self.A

    def basis(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(V_k (D, r), V_u (D, D - r)): orthonormal columns, A V_u = 0 (float64)."""
        return self._V[:, : self._r], self._V[:, self._r:]

    # ---- checks ----
    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise a ValueError unless x is (B, *event) with D = prod(event)."""
        D = math.prod(x.shape[1:]) if x.ndim >= 2 else None
        if D != self.dim:
            raise ValueError(f"{name} must have shape (B, *event) with {self.dim} entries per sample (the measurement's "
                             f"data dimension D; A has {self.dim} columns); got shape {tuple(x.shape)}")

    def check_observation(self, y, batch: Optional[int] = None) -> torch.Tensor:
        """y as a (B, m) or (1, m) tensor; a ValueError naming y for a wrong shape or a non-finite entry.

        Args:
            y: (m,) or (B, m) observation. batch: the batch size it must match (or be 1 for).
        """
        if not torch.is_tensor(y):
            try:
                y = torch.as_tensor(y, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"y must be an (m,) or (B, m) array with m = {self.num_observations}; got {y!r}") from err
        if y.ndim == 1:
            y = y[None]
        if y.ndim != 2 or y.shape[1] != self.num_observations or (batch is not None and y.shape[0] not in (1, batch)):
            want = f"(B, {self.num_observations})" + (f" with B in (1, {batch})" if batch is not None else "")
            raise ValueError(f"y must have shape ({self.num_observations},) or {want}; got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y must be finite (no NaN or inf entries); got a non-finite observation")
        return y

    # ---- the maps ----
    def _mat(self, M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return M.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x: (B, *event) -> (B, m)."""
        return x.flatten(1) @ self._mat(self.A, x).T

    __call__ = forward

    def observe(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """y = A x + noise_std z: (B, *event) -> (B, m)."""
        y = self.forward(x)
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y

    def split(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(c_k (B, r), c_u (B, D - r)): x's known and unknown coordinates in the measurement's basis."""
        Vk, Vu = self.basis()
        flat = x.flatten(1)
        return flat @ self._mat(Vk, x), flat @ self._mat(Vu, x)

    def combine(self, known: torch.Tensor, unknown: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """x with known coordinates `known` (B, r) and unknown ones `unknown` (B, D - r), shaped like `like`."""
        Vk, Vu = self.basis()
        return (known @ self._mat(Vk, like).T + unknown @ self._mat(Vu, like).T).reshape(like.shape)

    def known_from_observation(self, y: torch.Tensor) -> torch.Tensor:
        """c_k(y) = S^-1 U^T y, (B, m) -> (B, r): the known coordinates y implies."""
        return (y @ self._mat(self._U, y)) / self._mat(self._S, y)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """V_k V_k^T x: the orthogonal projection onto the known part, shaped like x."""
        known, unknown = self.split(x)
        return self.combine(known, torch.zeros_like(unknown), x)

    def replace_known(self, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """x with its known coordinates set to `known` (B or 1, r), the unknown ones kept."""
        _, unknown = self.split(x)
        return self.combine(known.expand(unknown.shape[0], -1), unknown, x)

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """||y - A x|| per sample, (B,) (y: (m,) or (B, m))."""
        y = self.check_observation(y, x.shape[0]).to(device=x.device, dtype=x.dtype)
        return (y - self.forward(x)).norm(dim=1)

    # ---- built-in examples ----
    @classmethod
    def super_resolution(cls, shape: Sequence[int], factor: int, noise_std: float = 0.0) -> "LinearMeasurement":
        """Average pooling by `factor` along every spatial axis.

        Args:
            shape: the event shape: (D,) for vectors (blocks of `factor` consecutive entries) or
                (C, H, W) for images (factor x factor blocks per channel); sizes divisible by `factor`.
            factor: the pooling factor >= 1. noise_std: sigma_y.
        """
        factor = check_positive_int("factor", factor)
        shape = tuple(int(s) for s in shape)
        spatial = shape if len(shape) == 1 else shape[1:]
        if len(shape) not in (1, 3) or any(s % factor for s in spatial):
            raise ValueError(f"shape must be (D,) or (C, H, W) with spatial sizes divisible by factor={factor}; got {shape}")
        D = math.prod(shape)
        eye = torch.eye(D, dtype=torch.float64)
        if len(shape) == 1:
            A = eye.reshape(D, 1, D)
            A = torch.nn.functional.avg_pool1d(A, factor).reshape(D, -1)
        else:
            A = torch.nn.functional.avg_pool2d(eye.reshape(D, *shape), factor).reshape(D, -1)
        return cls(A.T.contiguous(), noise_std)

    @classmethod
    def random_projection(cls, dim: int, num_observations: int, noise_std: float = 0.0,
                          generator: Optional[torch.Generator] = None) -> "LinearMeasurement":
        """A with i.i.d. N(0, 1 / D) entries, shape (num_observations, dim)."""
        dim = check_positive_int("dim", dim)
        m = check_positive_int("num_observations", num_observations)
        A = torch.randn(m, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
        return cls(A, noise_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.num_observations}, D={self.dim}, known={self.num_known}, noise_std={self.noise_std})"


class Inpainting(LinearMeasurement):
    """y = x[mask] (+ noise): the coordinates (pixels) where `mask` is True are observed.

    Args:
        mask: boolean array of the event shape (e.g. (D,) or (C, H, W)), at least one True and
            one False entry. noise_std: sigma_y (0: exact observations).
    """

    def __init__(self, mask, noise_std: float = 0.0):
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.ndim < 1:
            raise ValueError(f"mask must be a boolean array of the event shape (e.g. (D,) or (C, H, W)); got dtype "
                             f"{mask.dtype}, shape {tuple(mask.shape)}")
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("mask must mark at least one known (True) and one unknown (False) entry; "
                             f"got {int(mask.sum())} known of {mask.numel()}")
        self.mask = mask.cpu()
        self.noise_std = check_nonnegative("noise_std", noise_std)
        flat = self.mask.flatten()
        self._known_idx = torch.nonzero(flat).flatten()
        self._unknown_idx = torch.nonzero(~flat).flatten()
        self._D = flat.numel()
        self._r = self._known_idx.numel()

    @property
    def event_shape(self) -> Tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def dim(self) -> int:
        return self._D

    @property
    def num_observations(self) -> int:
        return self._r

    def matrix(self) -> torch.Tensor:
        return torch.eye(self._D, dtype=torch.float64)[self._known_idx]

    def basis(self):
        eye = torch.eye(self._D, dtype=torch.float64)
        return eye[:, self._known_idx], eye[:, self._unknown_idx]

    def check_data(self, x: torch.Tensor, name: str = "x") -> None:
        if tuple(x.shape[1:]) != self.event_shape and tuple(x.shape[1:]) != (self._D,):
            raise ValueError(f"mask has shape {self.event_shape}, but {name} has event shape {tuple(x.shape[1:])}: the "
                             f"mask must have the data's event shape (or its {self._D} entries match flat data)")

    def forward(self, x):
        return x.flatten(1)[:, self._known_idx.to(x.device)]

    __call__ = forward

    def split(self, x):
        flat = x.flatten(1)
        return flat[:, self._known_idx.to(x.device)], flat[:, self._unknown_idx.to(x.device)]

    def combine(self, known, unknown, like):
        out = torch.empty(like.shape[0], self._D, device=like.device, dtype=like.dtype)
        out[:, self._known_idx.to(like.device)] = known.to(like.dtype)
        out[:, self._unknown_idx.to(like.device)] = unknown.to(like.dtype)
        return out.reshape(like.shape)

    def known_from_observation(self, y):
        return y

    def __repr__(self):
        return f"Inpainting(known={self._r} of {self._D}, noise_std={self.noise_std})"


#: per pixel, the orthogonal colour transform of Colorization: row 0 is the (scaled) gray value
#: (1, 1, 1) / sqrt(3); rows 1-2 span the two chroma directions orthogonal to it
_COLOUR = torch.tensor([
    [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
    [-2 / math.sqrt(6), 1 / math.sqrt(6), 1 / math.sqrt(6)],
    [0.0, 1 / math.sqrt(2), -1 / math.sqrt(2)],
], dtype=torch.float64)


class Colorization(LinearMeasurement):
    """y = the gray image (mean of the 3 colour channels per pixel) (+ noise).

    Args:
        shape: the event shape (3, *spatial), channels first (flat data of 3 P entries is read
            channel-major, as `x.reshape(B, 3, P)`). noise_std: sigma_y.

    In the per-pixel orthogonal colour basis `_COLOUR` (Song et al. 2021, App. I.3) the first
    coordinate is sqrt(3) x gray and is known; the two chroma coordinates are unknown.
    """

    def __init__(self, shape: Sequence[int], noise_std: float = 0.0):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or shape[0] != 3 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be the event shape (3, *spatial) with 3 colour channels first; got {shape}")
        self.event_shape = shape
        self.noise_std = check_nonnegative("noise_std", noise_std)
        self._P = math.prod(shape[1:])
        self._D = 3 * self._P
        self._r = self._P

    @property
    def dim(self) -> int:
        return self._D

    @property
    def num_observations(self) -> int:
        return self._P

    def matrix(self) -> torch.Tensor:
        return torch.kron(torch.full((1, 3), 1 / 3, dtype=torch.float64), torch.eye(self._P, dtype=torch.float64))

    def basis(self):
        V = torch.kron(_COLOUR.T.contiguous(), torch.eye(self._P, dtype=torch.float64))  # columns: coordinate (k, p)
        return V[:, : self._P], V[:, self._P:]

    def check_data(self, x, name="x"):
        if tuple(x.shape[1:]) != self.event_shape and tuple(x.shape[1:]) != (self._D,):
            raise ValueError(f"{name} must have event shape {self.event_shape} (or {self._D} flat entries) for this "
                             f"Colorization; got {tuple(x.shape[1:])}")

    def _coords(self, x):
        return torch.einsum("kc,bcp->bkp", _COLOUR.to(device=x.device, dtype=x.dtype), x.reshape(x.shape[0], 3, self._P))

    def forward(self, x):
        return x.reshape(x.shape[0], 3, self._P).mean(1)

    __call__ = forward

    def split(self, x):
        c = self._coords(x)
        return c[:, 0], c[:, 1:].reshape(x.shape[0], 2 * self._P)

    def combine(self, known, unknown, like):
        c = torch.cat([known[:, None], unknown.reshape(unknown.shape[0], 2, self._P)], dim=1)
        x = torch.einsum("kc,bkp->bcp", _COLOUR.to(device=like.device, dtype=like.dtype), c)
        return x.reshape(like.shape)

    def known_from_observation(self, y):
        return math.sqrt(3) * y

    def __repr__(self):
        return f"Colorization(shape={self.event_shape}, noise_std={self.noise_std})"


# ---------------------------------------------------------------------------------------------
# conditioning methods: the `condition` hook of the grid samplers (sde_gen.samplers.base)
# ---------------------------------------------------------------------------------------------
class _Condition:
    """The hook a grid sampler calls (every method is a no-op here; a method overrides what it needs).

    Order of calls in `Sampler.__call__`: `wrap_score` (once, before counting), `start` on x_T
    (checks shapes before any work), `path` (the grid moves), `after_step` after every solver step
    to t_next, `jump` for a move back up the grid, `finish` after the final denoising.

    Class facts: `evals_per_call`, the network passes (forward and vector-Jacobian) one call of the
    wrapped score costs, which the sampler counts in its NFE; `jumps_back`, whether `path` moves back
    up the grid (refused by multistep samplers).
    """

    evals_per_call = 1
    jumps_back = False

    def __init__(self, measurement: LinearMeasurement, y):
        if not isinstance(measurement, LinearMeasurement):
            raise ValueError(f"measurement must be a LinearMeasurement, Inpainting or Colorization; got {measurement!r}")
        self.measurement = measurement
        self.y = measurement.check_observation(y)

    def _y(self, x: torch.Tensor) -> torch.Tensor:
        return self.y.to(device=x.device, dtype=x.dtype)

    def wrap_score(self, sde, score_fn: ScoreFn) -> ScoreFn:
        return score_fn

    def grid_steps(self, steps: int) -> int:
        """Grid steps N that a budget of `steps` solver steps buys (1 step each by default)."""
        return steps

    def path(self, N: int):
        """The moves (i, j) along the grid: j = i + 1 a solver step, j < i a jump back."""
        return [(i, i + 1) for i in range(N)]

    def start(self, sde, x: torch.Tensor, t: torch.Tensor, generator) -> torch.Tensor:
        self.measurement.check_data(x)
        self.measurement.check_observation(self.y, x.shape[0])
        return x

    def after_step(self, sde, x, t_next, generator):
        return x

    def jump(self, sde, x, t, t_up, generator):
        raise ValueError(f"{type(self).__name__} does not jump back along the grid")

    def finish(self, sde, x: torch.Tensor) -> torch.Tensor:
        """Data consistency for exact observations: known part := c_k(y)."""
        if self.measurement.noise_std > 0:
            return x
        return self.measurement.replace_known(x, self.measurement.known_from_observation(self._y(x)))

    def __repr__(self):
        return f"{type(self).__name__}({self.measurement!r})"


class Replacement(_Condition):
    """Replacement (Song et al. 2021, App. I.2): after every step to t, known part := a(t) c_k(y) + s(t) z.

    Args:
        measurement: the measurement model. y: (m,) or (B, m) observation.
    """

    name = "replacement"

    def _replace(self, sde, x, t, generator):
        a, s = sde.marginal_coeffs(t)
        ck = self.measurement.known_from_observation(self._y(x))
        z = torch.randn((x.shape[0], ck.shape[1]), generator=generator, device=x.device, dtype=x.dtype)
        noisy = append_dims(a.to(x.dtype), 2) * ck + append_dims(s.to(x.dtype), 2) * z
        return self.measurement.replace_known(x, noisy)

    def start(self, sde, x, t, generator):
        x = super().start(sde, x, t, generator)
        return self._replace(sde, x, t, generator)

    def after_step(self, sde, x, t_next, generator):
        return self._replace(sde, x, t_next, generator)


class RePaint(Replacement):
    """RePaint (Lugmayr et al. 2022, Alg. 1): replacement, and every `jump_length` steps a jump back
    up the grid by the forward kernel x_t' = a_{t'|t} x_t + sqrt(v_{t'|t}) z, the segment being
    denoised `resamplings` times in all.

    Args:
        measurement, y: as in `Replacement`. jump_length: r >= 1 grid steps per jump.
        resamplings: u >= 1 passes over each segment (1: plain replacement).
        The defaults (r = 1, u = 5) were chosen on gaussian16d inpainting at NFE 100-200 only
        (u = 10 is better at NFE 200 but leaves too coarse a grid at NFE 100); Lugmayr et al.
        use r = u = 10 at 250 grid steps.

    NFE: every pass is paid for; a budget of n solver steps buys a grid of n // u steps.
    Multistep samplers (DPM-Solver++ 2M/3M, UniPC, DEIS, iPNDM) refuse RePaint with one error: after
    a jump their memory would hold the previous pass's predictions at other states.
    """

    name = "repaint"
    jumps_back = True

    def __init__(self, measurement, y, jump_length: int = 1, resamplings: int = 5):
        super().__init__(measurement, y)
        self.jump_length = check_positive_int("jump_length", jump_length)
        self.resamplings = check_positive_int("resamplings", resamplings)

    def grid_steps(self, steps: int) -> int:
        return steps // self.resamplings

    def path(self, N: int):
        moves, i = [], 0
        while i < N:
            end = min(i + self.jump_length, N)
            for rep in range(self.resamplings):
                moves += [(k, k + 1) for k in range(i, end)]
                if rep < self.resamplings - 1:
                    moves.append((end, i))
            i = end
        return moves

    def jump(self, sde, x, t, t_up, generator):
        ratio, var = sde.transition_coeffs(t, t_up)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return append_dims(ratio.to(x.dtype), x.ndim) * x + append_dims(var.sqrt().to(x.dtype), x.ndim) * z

    def __repr__(self):
        return f"RePaint({self.measurement!r}, jump_length={self.jump_length}, resamplings={self.resamplings})"


@contextlib.contextmanager
def _tweedie_mean(sde, score_fn, x: torch.Tensor, t: torch.Tensor):
    """Inside: (x_g, score, a, s, x0_hat) with gradients on, x0_hat = (x_g + s^2 score(x_g, t)) / a (Tweedie's
    mean) a differentiable function of x_g, a copy of x that requires grad (also under inference mode,
    where samplers run). The guided scores of DPS and `TweedieMoment` differentiate through it."""
    inference = x.is_inference() or t.is_inference()
    with torch.inference_mode(False), torch.enable_grad():
        xg = (x.clone() if inference else x.detach()).requires_grad_(True)
        tt = t.clone() if inference else t
        score = score_fn(xg, tt)
        a, s = sde.marginal_coeffs(tt)
        a, s = append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)
        yield xg, score, a, s, (xg + s ** 2 * score) / a


class DPS(_Condition):
    """Diffusion posterior sampling (Chung et al. 2023) as a score wrapper:

        score_y(x, t) = score(x, t) - scale grad_x ||y - A x0_hat(x, t)||^2 / (2 r_t^2),
        x0_hat = (x + s(t)^2 score(x, t)) / a(t)  (Tweedie),   r_t^2 = sigma_y^2 + s(t)^2 / (a(t)^2 + s(t)^2),

    the gradient of log N(y; A x0_hat, r_t^2 I) (their eq. 16 with the Gaussian likelihood; the
    variance r_t^2 of x0_hat for unit-variance data, as in Song et al. 2023, PiGDM, stands in for
    their normalised step size zeta / ||y - A x0_hat||, so the correction is the same for every
    sampler and grid). One call = a forward pass and one backward (vector-Jacobian) pass, counted
    as 2 evaluations (`evals_per_call`).

    Args:
        measurement, y: as in `Replacement`. scale: the guidance weight (> 0); the default 2 was
            chosen on gaussian16d inpainting at NFE 200 only (benchmarks/results/inverse.md).
    """

    name = "dps"
    evals_per_call = 2

    def __init__(self, measurement, y, scale: float = 2.0):
        super().__init__(measurement, y)
        self.scale = check_positive("scale", scale)

    def wrap_score(self, sde, score_fn):
        meas, scale, var_y = self.measurement, self.scale, self.measurement.noise_std ** 2

        def dps_score(x, t):
            with _tweedie_mean(sde, score_fn, x, t) as (xg, score, a, s, x0):
                loss = (self._y(x) - meas.forward(x0)).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, xg)
            r2 = var_y + s ** 2 / (a ** 2 + s ** 2)
            return score.detach() - scale * grad / (2 * r2)

        return dps_score

    def __repr__(self):
        return f"DPS({self.measurement!r}, scale={self.scale})"


#: covariance models of `TweedieMoment`
COVARIANCES = ("full", "cg", "scalar")


class TweedieMoment(_Condition):
    """Tweedie-moment posterior sampling (TMPD, Boys et al. 2023; PiGDM, Song et al. 2023):
    p(x_0 | x_t) is approximated by the Gaussian with Tweedie's two moments,

        x0_hat = (x + s(t)^2 score(x, t)) / a(t),          Cov[x_0 | x_t] = C_t = (s(t)^2 / a(t)) J,
        J = d x0_hat / d x_t                               (Tweedie's second-order identity),

    so p(y | x_t) ~ N(y; A x0_hat, Sigma_t), Sigma_t = A C_t A^T + sigma_y^2 I, and the conditional score is

        score_y(x, t) = score(x, t) + J^T A^T Sigma_t^-1 (y - A x0_hat)

    (C_t held fixed in the gradient, as in TMPD). For Gaussian data x0_hat is affine in x_t and C_t
    does not depend on x_t, so this *is* the exact score of p_t(x_t | y): no bias, for any SDE.

    Args:
        measurement, y: as in `Replacement`.
        covariance: how Sigma_t^-1 (y - A x0_hat) is obtained (m = the number of observations):
            "full": the m vector-Jacobian products J^T A_j^T (A_j the rows of A) give A J A^T, so
                Sigma_t exactly, and the gradient without a further pass: 1 + m evaluations per
                call. Exact for Gaussian data.
            "cg": `cg_iters` conjugate-gradient iterations on Sigma_t u = y - A x0_hat, one
                vector-Jacobian product each (Sigma_t v = sigma_y^2 v + (s^2 / a) A J^T A^T v, J taken
                as symmetric, which a true score's Jacobian is), and one more for J^T A^T u:
                2 + cg_iters evaluations per call for any m; exact for Gaussian data once
                cg_iters >= m (in exact arithmetic).
            "scalar": A C_t A^T ~ rho I with rho = 1^T A C_t A^T 1 / m (a Rayleigh quotient, between
                its extreme eigenvalues; from one vector-Jacobian product with A^T 1), and one more
                for the gradient: 3 evaluations per call for any m; exact only where A C_t A^T is
                a multiple of I. (TMPD's row-sum diagonal was tried too and diverged on mixtures.)
        cg_iters: iterations of "cg" (>= 1).
        Defaults ("full"; cg_iters 4) and the sampler to pair them with (dpm_solver) were chosen on
        gaussian16d inpainting only (benchmarks/results/inverse.md).

    NFE: every forward pass and every vector-Jacobian product is one evaluation (`evals_per_call`),
    so a budget buys 1 / evals_per_call as many steps. In "full", Sigma_t is symmetrised and its
    eigenvalues clamped at m eps(dtype) times the largest, so it stays positive definite for a
    trained score.
    """

    name = "tweedie_moment"

    def __init__(self, measurement, y, covariance: str = "full", cg_iters: int = 4):
        super().__init__(measurement, y)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {list(COVARIANCES)}; got {covariance!r}")
        self.covariance = covariance
        self.cg_iters = check_positive_int("cg_iters", cg_iters)

    @property
    def evals_per_call(self) -> int:
        """1 forward pass + m (full), cg_iters + 1 (cg) or 2 (scalar) vector-Jacobian products."""
        if self.covariance == "full":
            return 1 + self.measurement.num_observations
        return 2 + (self.cg_iters if self.covariance == "cg" else 1)

    def wrap_score(self, sde, score_fn):
        meas, var_y, full = self.measurement, self.measurement.noise_std ** 2, self.covariance == "full"

        def tweedie_score(x, t):
            with _tweedie_mean(sde, score_fn, x, t) as (xg, score, a, s, x0):
                Ax0 = meas.forward(x0)                              # (B, m)
                r = self._y(x) - Ax0.detach()                       # y - A x0_hat
                c = (s ** 2 / a).flatten()                          # C_t = c J
                B, m = Ax0.shape
                if full:
                    # M = J^T A^T (B, D, m), column j = the VJP of row j of A x0_hat (samples independent)
                    cols = [torch.autograd.grad(Ax0[:, j].sum(), xg, retain_graph=j < m - 1)[0].reshape(B, -1)
                            for j in range(m)]
                    M = torch.stack(cols, dim=2)
                    AM = meas.forward(M.transpose(1, 2).reshape(B * m, -1)).reshape(B, m, m).transpose(1, 2)  # A J^T A^T
                    Sigma = c[:, None, None] * 0.5 * (AM + AM.transpose(1, 2))
                    Sigma = Sigma + var_y * torch.eye(m, device=x.device, dtype=x.dtype)
                    lam, Q = torch.linalg.eigh(Sigma)
                    floor = lam.abs().amax(1, keepdim=True) * m * torch.finfo(x.dtype).eps
                    u = Q @ ((Q.transpose(1, 2) @ r[:, :, None]) / torch.maximum(lam, floor)[:, :, None])
                    grad = (M @ u).squeeze(2)                      # J^T A^T Sigma^-1 r
                elif self.covariance == "cg":
                    # Sigma_t u = r by conjugate gradients, Sigma_t v = sigma_y^2 v + c A J^T A^T v (one VJP each;
                    # J is symmetric for a true score), then the gradient J^T A^T u by one more VJP
                    def Sigma(v):
                        (w,) = torch.autograd.grad(Ax0, xg, grad_outputs=v, retain_graph=True)
                        return var_y * v + c[:, None] * meas.forward(w)

                    u = torch.zeros_like(r)
                    res, p = r.clone(), r.clone()
                    rr = (res * res).sum(1, keepdim=True)
                    tiny = torch.finfo(x.dtype).tiny
                    for _ in range(self.cg_iters):
                        Sp = Sigma(p)
                        pSp = (p * Sp).sum(1, keepdim=True)
                        alpha = torch.where(pSp > tiny, rr / pSp.clamp(min=tiny), torch.zeros_like(pSp))
                        u = u + alpha * p
                        res = res - alpha * Sp
                        rr_new = (res * res).sum(1, keepdim=True)
                        p = res + torch.where(rr > tiny, rr_new / rr.clamp(min=tiny), torch.zeros_like(rr)) * p
                        rr = rr_new
                    (grad,) = torch.autograd.grad(Ax0, xg, grad_outputs=u)
                    grad = grad.reshape(B, -1)
                else:
                    ones = torch.ones_like(Ax0)
                    (w,) = torch.autograd.grad(Ax0, xg, grad_outputs=ones, retain_graph=True)  # J^T A^T 1
                    rows = c[:, None] * meas.forward(w)            # row sums of A C_t A^T (J symmetric)
                    # the Rayleigh quotient 1^T A C_t A^T 1 / m: between the extreme eigenvalues of A C_t A^T
                    # (non-negative for a PSD C_t; c, the C_t of a unit-variance J, where it is not)
                    rq = rows.mean(1, keepdim=True)
                    diag = torch.where(rq > 0, rq, c[:, None]).expand_as(rows) + var_y
                    (grad,) = torch.autograd.grad(Ax0, xg, grad_outputs=r / diag)  # J^T A^T diag^-1 r
                    grad = grad.reshape(B, -1)
            return score.detach() + grad.reshape(x.shape)

        return tweedie_score

    def __repr__(self):
        return f"TweedieMoment({self.measurement!r}, covariance={self.covariance!r})"


class ExactConditional(_Condition):
    """The reference: sampling with the exact score of p_t(x_t | y) of an oracle.

    The posterior p_0(x | y) is the oracle's `condition(measurement, y)` (a Gaussian mixture, with
    zero variance along the known directions of a noise-free measurement), diffused exactly by the
    SDE; the unconditional score given to the sampler is not used.

    Args:
        oracle: a `GaussianMixture`. measurement: the measurement model. y: one observation (m,).
    """

    name = "exact_conditional"

    def __init__(self, oracle, measurement, y):
        super().__init__(measurement, y)
        if self.y.shape[0] != 1:
            raise ValueError(f"y must be one observation of shape ({measurement.num_observations},) for "
                             f"exact_conditional (the posterior is that of one y); got {tuple(self.y.shape)}")
        self.posterior = oracle.condition(measurement, self.y[0])

    def wrap_score(self, sde, score_fn):
        return self.posterior.score_fn(sde)


#: name -> conditioning method
CONDITIONS: Dict[str, type] = {
    Replacement.name: Replacement,
    RePaint.name: RePaint,
    DPS.name: DPS,
    TweedieMoment.name: TweedieMoment,
    ExactConditional.name: ExactConditional,
}


def build_condition(name: str, measurement: LinearMeasurement, y, oracle=None, **options) -> _Condition:
    """A conditioning method by name: `build_condition("repaint", m, y, jump_length=5)`;
    `exact_conditional` needs `oracle`."""
    if name not in CONDITIONS:
        raise ValueError(f"condition must be one of {list(CONDITIONS)}; got {name!r}")
    if name == ExactConditional.name:
        if oracle is None:
            raise ValueError("exact_conditional needs oracle= (a GaussianMixture); got None")
        return ExactConditional(oracle, measurement, y, **options)
    return CONDITIONS[name](measurement, y, **options)


#: mask presets of `mask_preset`
MASKS = ("half", "random", "box")


def mask_preset(name: str, event_shape: Sequence[int], missing: float = 0.7,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A boolean mask (True = known) of `event_shape` for `Inpainting`.

    Args:
        name: "half" (the first half known: the first D // 2 entries of a vector, the top half
            rows of an image (C, H, W)), "random" (each entry unknown with probability `missing`,
            at least one known and one unknown) or "box" (a centred block unknown: a contiguous
            run of round(missing D) entries of a vector, a square covering about `missing` of an
            image's area, every channel).
        event_shape: (D,) or (C, H, W). missing: the fraction unknown, in (0, 1).
        generator: randomness of "random".
    """
    if name not in MASKS:
        raise ValueError(f"mask must be one of {list(MASKS)}; got {name!r}")
    if not (isinstance(missing, (int, float)) and 0 < missing < 1):
        raise ValueError(f"missing must lie in the open interval (0, 1); got {missing!r}")
    shape = tuple(int(s) for s in event_shape)
    if len(shape) not in (1, 3) or math.prod(shape) < 2:
        raise ValueError(f"event_shape must be (D,) with D >= 2 or (C, H, W); got {shape}")
    mask = torch.ones(shape, dtype=torch.bool)
    if name == "half":
        if len(shape) == 1:
            mask[shape[0] // 2:] = False
        else:
            mask[:, shape[1] // 2:] = False
    elif name == "random":
        D = math.prod(shape)
        order = torch.randperm(D, generator=generator)
        num_missing = min(max(round(missing * D), 1), D - 1)
        flat = mask.flatten()
        flat[order[:num_missing]] = False
        mask = flat.reshape(shape)
    else:
        if len(shape) == 1:
            D = shape[0]
            k = min(max(round(missing * D), 1), D - 1)
            start = (D - k) // 2
            mask[start:start + k] = False
        else:
            H, W = shape[1:]
            h = min(max(round(math.sqrt(missing) * H), 1), H)
            w = min(max(round(math.sqrt(missing) * W), 1), W - 1 if h == H else W)
            top, left = (H - h) // 2, (W - w) // 2
            mask[:, top:top + h, left:left + w] = False
    return mask
