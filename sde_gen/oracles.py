"""Exact-score oracles: Gaussian-mixture data whose perturbed densities are known in closed form.

For data p_0 = sum_k w_k N(mu_k, Sigma_k) and an SDE with affine marginal x_t = a(t) x_0 + s(t) z,
the perturbed density is again a mixture (e.g. Song et al. 2021, App. B; Karras et al. 2022):

    p_t(x) = sum_k w_k N(x; a mu_k, C_k(t)),   C_k(t) = a^2 Sigma_k + s^2 I,
    grad log p_t(x) = -sum_k r_k(x) C_k(t)^{-1} (x - a mu_k),   r_k = softmax_k(log w_k + log N_k).

Each Sigma_k = U_k diag(lambda_k) U_k^T is diagonalised once, so C_k(t) = U_k diag(a^2 lambda_k + s^2) U_k^T
is inverted and log-determined for free at every t, stably from t = eps to t = T and in 2 to 1,000
dimensions (the responsibilities use log-sum-exp). A single Gaussian is the case K = 1.

Every sampler, likelihood and trained network of the library is checked against these.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ._validation import check_choice, check_positive_int
from .sdes import SDE
from .utils import as_time

__all__ = ["GaussianMixture", "ExactConditionalScore", "PRESETS", "make_preset"]

_LOG_2PI = math.log(2 * math.pi)


def _check_classes(classes, K: int) -> torch.Tensor:
    """The (K,) long component -> class map; None gives each component its own class."""
    if classes is None:
        return torch.arange(K)
    try:
        out = torch.as_tensor(classes)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"classes must be a (K,) = ({K},) array of integer labels; got {classes!r}") from err
    if out.shape != (K,) or out.is_floating_point() or out.is_complex() or out.dtype == torch.bool:
        raise ValueError(f"classes must be a (K,) = ({K},) array of integer labels; got shape {tuple(out.shape)}, dtype {out.dtype}")
    out = out.long()
    C = int(out.max()) + 1 if K else 0
    if int(out.min()) < 0 or torch.unique(out).numel() != C:
        raise ValueError(
            f"classes must take every value of 0..C-1 (allowed: labels 0..{K - 1} with none skipped); got {out.tolist()}"
        )
    return out


def _as_float64(name: str, value) -> torch.Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be an array of real numbers; got {value!r}") from err
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite; got non-finite entries")
    return out


def _gaussian_log_density(resid: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(resid; 0, cov) for (K, m) residuals and (K, m, m) positive-definite covariances, (K,)."""
    L = torch.linalg.cholesky(cov)
    v = torch.linalg.solve_triangular(L, resid[..., None], upper=False)[..., 0]
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (v ** 2).sum(-1) - half_logdet - 0.5 * resid.shape[-1] * _LOG_2PI


class GaussianMixture(nn.Module):
    """A mixture of K Gaussians in D dimensions with exact perturbed scores for any affine SDE.

    Args:
        weights: (K,) non-negative mixture weights summing to 1.
        means: (K, D) component means.
        covariances: (K, D, D) symmetric positive-definite matrices (full) or (K, D) positive
            variances (diagonal).
        classes: (K,) class label of each component, taking every value of 0..C-1 (several
            components may share a class); None makes each component its own class.

    The parameters are stored as float64 buffers; computations run in the dtype and on the
    device of the input `x` (move the module with `.to(device)` to avoid per-call copies).
    """

    def __init__(self, weights, means, covariances, classes=None):
        super().__init__()
        w = _as_float64("weights", weights)
        mu = _as_float64("means", means)
        cov = _as_float64("covariances", covariances)
        if w.ndim != 1 or w.numel() < 1:
            raise ValueError(f"weights must have shape (K,) with K >= 1; got {tuple(w.shape)}")
        if (w < 0).any():
            raise ValueError("weights must be >= 0 (allowed: [0, 1], summing to 1); got a negative weight")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (allowed: within 1e-6); got sum {float(w.sum())!r}")
        K = w.numel()
        if mu.ndim != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape (K, D) = ({K}, D); got {tuple(mu.shape)}")
        D = mu.shape[1]
        if cov.shape == (K, D):
            if (cov <= 0).any():
                raise ValueError("covariances (diagonal) must be > 0 (positive definite); got a variance <= 0")
            self.diagonal = True
            eigvals, eigvecs = cov, torch.empty(0, dtype=torch.float64)
        elif cov.shape == (K, D, D):
            if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-10, atol=1e-12):
                raise ValueError("covariances must be symmetric; got a non-symmetric matrix")
            eigvals, eigvecs = torch.linalg.eigh(cov)
            if (eigvals <= 0).any():
                raise ValueError(
                    "covariances must be positive definite; got a matrix with eigenvalue "
                    f"{float(eigvals.min())!r} <= 0"
                )
            self.diagonal = False
        else:
            raise ValueError(
                f"covariances must have shape (K, D, D) = ({K}, {D}, {D}) or (K, D) = ({K}, {D}); "
                f"got {tuple(cov.shape)}"
            )
        self.register_buffer("classes", _check_classes(classes, K))
        self.register_buffer("weights", w)
        self.register_buffer("means", mu)
        self.register_buffer("eigvals", eigvals)  # (K, D)
        self.register_buffer("eigvecs", eigvecs)  # (K, D, D) or empty when diagonal

    # ---- construction helpers ----
    @classmethod
    def gaussian(cls, mean, covariance) -> "GaussianMixture":
        """A single Gaussian N(mean, covariance); covariance (D, D) or (D,) diagonal."""
        mean = _as_float64("mean", mean)
        cov = _as_float64("covariance", covariance)
        return cls(torch.ones(1, dtype=torch.float64), mean[None], cov[None])

    @classmethod
    def preset(cls, name: str) -> "GaussianMixture":
        """One of the named problems in `PRESETS`."""
        return make_preset(name)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    @property
    def num_classes(self) -> int:
        """C, the number of classes (`classes` takes every value of 0..C-1)."""
        return int(self.classes.max()) + 1

    def covariances(self) -> torch.Tensor:
        """(K, D, D) component covariances (float64)."""
        if self.diagonal:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)

    def mean(self) -> torch.Tensor:
        """(D,) mean of the mixture."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """(D, D) covariance of the mixture (law of total covariance)."""
        m = self.mean()
        centred = self.means - m
        between = torch.einsum("k,kd,ke->de", self.weights, centred, centred)
        return torch.einsum("k,kde->de", self.weights, self.covariances()) + between

    def perturbed(self, sde: SDE, t: float) -> "GaussianMixture":
        """The exact marginal p_t of `sde` started from this distribution, as a mixture."""
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = (c.item() for c in sde.marginal_coeffs(tt))
        if self.diagonal:
            cov = a ** 2 * self.eigvals + s ** 2
        else:
            cov = a ** 2 * self.covariances() + s ** 2 * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, cov, self.classes)

    # ---- sampling ----
    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
        return_labels: bool = False,
        y=None,
    ):
        """Draw `n` samples.

        Args:
            n: number of samples.
            generator: source of randomness; its device is used when `device` is None.
            device: of the result; None follows the generator, then the module's buffers.
            dtype: of the result; None gives torch's default dtype.
            return_labels: also return the (n,) component index of each sample.
            y: draw from the class-conditional law p_0(x | y) instead: an int class for every
                sample, or an (n,) tensor of classes in [0, C).

        Returns:
            (n, D) samples, and the labels when asked for.
        """
        n = check_positive_int("n", n)
        if device is None:
            device = generator.device if generator is not None else self.means.device
        dtype = dtype or torch.get_default_dtype()
        if y is None:
            labels = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        else:
            # the component given the class: weights restricted to the class's components
            member = self._member(self.check_labels(y, n, device))  # (n, K)
            labels = torch.multinomial(self.weights.to(device) * member, 1, replacement=True, generator=generator)[:, 0]
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        scaled = z * self.eigvals.to(device)[labels].sqrt()
        if not self.diagonal:
            scaled = torch.einsum("nde,ne->nd", self.eigvecs.to(device)[labels], scaled)
        x = (self.means.to(device)[labels] + scaled).to(dtype)
        return (x, labels) if return_labels else x

    # ---- inverse problems: exact posteriors (sde_gen.inverse) ----
    def condition(self, measurement, y) -> "GaussianMixture":
        """The exact posterior p_0(x | y) for y = A x + e, e ~ N(0, sigma_y^2 I), as a mixture.

        Each component N(mu_k, S_k) is conditioned on y and re-weighted by its marginal likelihood
        (Bishop 2006, eq. 2.113-2.117): w_k' ~ w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I).

        * sigma_y > 0: the Kalman update, gain G_k = S_k A^T (A S_k A^T + sigma_y^2 I)^-1, mean
          mu_k + G_k (y - A mu_k), covariance in Joseph form (I - G_k A) S_k (I - G_k A)^T +
          sigma_y^2 G_k G_k^T, which is positive semi-definite by construction.
        * sigma_y = 0: in the measurement's basis (c_k, c_u) the known part is fixed, c_k = c_k(y),
          and c_u | c_k is Gaussian with the Schur complement S_uu - S_uk S_kk^-1 S_ku as covariance.
          The posterior is then *singular*: its covariances are stored by eigen-decomposition with
          eigenvalue exactly 0 along the r known directions (eigenvectors V_k) and the Schur
          complement's eigenvalues along V_u. Sampling puts every sample's known part at c_k(y)
          exactly; the perturbed density at t > 0 (eigenvalues a^2 lambda + s^2 >= s^2 > 0), hence
          `score(x, t, sde)`, `score_fn(sde)`, `log_prob(x, t, sde)`, is exact; the data density
          (`sde=None`) does not exist (log_prob gives -inf or nan there).

        Args:
            measurement: a `sde_gen.inverse.LinearMeasurement` (or `Inpainting`, `Colorization`)
                whose data dimension is this mixture's D.
            y: one observation, shape (m,) (or (1, m)).

        Returns:
            A `GaussianMixture` (full covariances, float64) with the same class map.

        Raises:
            ValueError: a measurement of another data dimension (A's columns != D), y of the
                wrong shape or with a non-finite entry, or y impossible under every component.
        """
        D = self.dim
        if measurement.dim != D:
            raise ValueError(f"measurement: A must have D = {D} columns (this mixture's dimension); got {measurement.dim}")
        y = measurement.check_observation(y)
        if y.shape[0] != 1:
            raise ValueError(f"y must be one observation of shape ({measurement.num_observations},); got {tuple(y.shape)}")
        kw = dict(dtype=torch.float64, device=self.means.device)
        y = y[0].to(**kw)
        mu, S = self.means, self.covariances()  # (K, D), (K, D, D)
        K = self.num_components
        s2 = float(measurement.noise_std) ** 2
        if s2 > 0:
            A = measurement.matrix().to(**kw)  # (m, D)
            AS = A @ S  # (K, m, D)
            G = AS @ A.T + s2 * torch.eye(A.shape[0], **kw)  # (K, m, m) covariance of y
            resid = y - mu @ A.T  # (K, m)
            gain_T = torch.linalg.solve(G, AS)  # (K, m, D) = G^-1 A S = gain^T
            mean = mu + torch.einsum("kmd,km->kd", gain_T, resid)
            I_GA = torch.eye(D, **kw) - gain_T.transpose(-1, -2) @ A
            cov = I_GA @ S @ I_GA.transpose(-1, -2) + s2 * gain_T.transpose(-1, -2) @ gain_T
            eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
            eigvals = eigvals.clamp_min(0.0)
            log_lik = _gaussian_log_density(resid, G)
        else:
            Vk, Vu = (v.to(**kw) for v in measurement.basis())  # (D, r), (D, D - r)
            ck = measurement.known_from_observation(y[None])[0].to(**kw)  # (r,)
            S_kk = Vk.T @ S @ Vk  # (K, r, r)
            S_uk = Vu.T @ S @ Vk  # (K, D - r, r)
            S_uu = Vu.T @ S @ Vu
            diff = ck - mu @ Vk  # (K, r)
            L = torch.linalg.cholesky(S_kk)
            W = torch.linalg.solve_triangular(L, S_uk.transpose(-1, -2), upper=False)  # L^-1 S_ku
            v = torch.linalg.solve_triangular(L, diff[..., None], upper=False)  # L^-1 (c_k - m_k)
            mean_u = mu @ Vu + (W.transpose(-1, -2) @ v)[..., 0]
            schur = S_uu - W.transpose(-1, -2) @ W
            lam_u, U_u = torch.linalg.eigh(0.5 * (schur + schur.transpose(-1, -2)))
            r = Vk.shape[1]
            mean = ck @ Vk.T + mean_u @ Vu.T
            eigvals = torch.cat([torch.zeros(K, r, **kw), lam_u.clamp_min(0.0)], dim=1)
            eigvecs = torch.cat([Vk.expand(K, D, r), Vu @ U_u], dim=2)
            # N(y; A mu, A S A^T) = N(c_k; V_k^T mu, S_kk) / |det(A V_k)|: the constant cancels
            log_lik = -0.5 * (v[..., 0] ** 2).sum(-1) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1) \
                - 0.5 * r * _LOG_2PI
        log_w = torch.log(self.weights) + log_lik
        if not bool(torch.isfinite(log_w).any()):
            raise ValueError("y has probability 0 under every component of the mixture; no posterior exists")
        return GaussianMixture._from_spectrum(torch.softmax(log_w, 0), mean, eigvals, eigvecs, self.classes)

    @classmethod
    def _from_spectrum(cls, weights, means, eigvals, eigvecs, classes) -> "GaussianMixture":
        """A mixture with covariances U diag(eigvals) U^T given by their spectra, eigenvalues >= 0
        allowed (the constructor demands > 0): built with unit placeholders, then the spectrum set."""
        out = cls(weights, means, torch.ones_like(means), classes)
        out.diagonal = False
        out.eigvals = eigvals.to(torch.float64)
        out.eigvecs = eigvecs.to(torch.float64)
        return out

    # ---- densities and scores ----
    def _params(self, x: torch.Tensor):
        kw = dict(device=x.device, dtype=x.dtype)
        vecs = None if self.diagonal else self.eigvecs.to(**kw)
        return self.weights.to(**kw), self.means.to(**kw), self.eigvals.to(**kw), vecs

    def _component_terms(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """Per-component log densities (B, K) and the whitened residuals y / var (B, K, D)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}); got {tuple(x.shape)}")
        w, mu, lam, vecs = self._params(x)
        a, s = a.to(x.dtype)[:, None, None], s.to(x.dtype)[:, None, None]
        var = a ** 2 * lam[None] + s ** 2  # (B, K, D), eigenvalues of C_k(t)
        diff = x[:, None, :] - a * mu[None]  # (B, K, D)
        y = diff if vecs is None else torch.einsum("bkd,kde->bke", diff, vecs)
        log_norm = -0.5 * ((y ** 2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * _LOG_2PI)
        return torch.log(w)[None] + log_norm, y / var, vecs

    def _coeffs(self, x: torch.Tensor, t, sde: Optional[SDE]):
        if sde is None:
            ones = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
            return ones, torch.zeros_like(ones)
        return sde.marginal_coeffs(as_time(t, x))

    def log_prob(self, x: torch.Tensor, t=None, sde: Optional[SDE] = None) -> torch.Tensor:
        """log p_t(x) per sample, shape (B,); with `sde=None` the data density log p_0(x).

        Args:
            x: (B, D). t: (B,) times or a scalar (ignored when `sde` is None). sde: the SDE.
        """
        a, s = self._coeffs(x, t, sde)
        log_terms, _, _ = self._component_terms(x, a, s)
        return torch.logsumexp(log_terms, dim=1)

    def score(self, x: torch.Tensor, t=None, sde: Optional[SDE] = None) -> torch.Tensor:
        """grad_x log p_t(x), shape (B, D); with `sde=None` the data score."""
        a, s = self._coeffs(x, t, sde)
        log_terms, y_over_var, vecs = self._component_terms(x, a, s)
        resp = torch.softmax(log_terms, dim=1)[..., None]  # (B, K, 1)
        weighted = resp * y_over_var
        if vecs is None:
            return -weighted.sum(1)
        return -torch.einsum("bke,kde->bd", weighted, vecs)

    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score of p_t under `sde` as `score_fn(x, t)`, the library's contract."""

        def exact_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.score(x, t, sde)

        return exact_score

    def component_log_posterior(self, x: torch.Tensor, t=None, sde: Optional[SDE] = None) -> torch.Tensor:
        """log P(component k | x) under p_t, shape (B, K) (used for mode-weight metrics)."""
        a, s = self._coeffs(x, t, sde)
        log_terms, _, _ = self._component_terms(x, a, s)
        return torch.log_softmax(log_terms, dim=1)

    # ---- classes: exact class posteriors and class-conditional scores ----
    def check_labels(self, y, n: int, device=None, name: str = "y") -> torch.Tensor:
        """Class labels as an (n,) long tensor on `device`: an int (every sample) or (n,) integers in [0, C).

        Args:
            y: the labels. n: the number of samples. device: of the result. name: the field named
                in error messages.

        Raises:
            ValueError naming `name` and the allowed range (checked once, before any sampling): a
            float, bool or misshapen label, one outside [0, C), or a class of prior probability 0
            (all its components have weight 0: its conditional law is undefined).
        """
        C = self.num_classes
        if isinstance(y, bool) or (not isinstance(y, numbers.Integral) and not torch.is_tensor(y)):
            raise ValueError(f"{name} must be an int class or an ({n},) tensor of classes in [0, {C}); got {y!r}")
        y = torch.as_tensor(y, device=device)
        if y.ndim == 0:
            y = y.expand(n)
        if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must be an int class or an ({n},) integer tensor of classes in [0, {C}); "
                             f"got shape {tuple(y.shape)}, dtype {y.dtype}")
        if bool(((y < 0) | (y >= C)).any()):
            raise ValueError(f"{name} must lie in [0, {C}) (this mixture has {C} classes); got {sorted(set(y.tolist()))}")
        y = y.long()
        empty = self.class_weights().to(y.device) <= 0
        if bool(empty.any()) and bool(empty[y].any()):
            raise ValueError(f"{name}: class(es) {sorted(set(y[empty[y]].tolist()))} have prior probability 0 (every "
                             f"component of the class has weight 0), so p(x | {name}) is undefined; allowed: classes "
                             f"{torch.nonzero(~empty).flatten().tolist()}")
        return y

    def _member(self, y: torch.Tensor) -> torch.Tensor:
        """(B, K) indicator that component k belongs to class y_b (as 0/1 of float64)."""
        return (self.classes.to(y.device)[None, :] == y[:, None]).to(torch.float64)

    def class_weights(self) -> torch.Tensor:
        """(C,) prior class probabilities p(y) = sum of the weights of the class's components."""
        return torch.zeros(self.num_classes, dtype=torch.float64, device=self.weights.device).index_add_(
            0, self.classes, self.weights)

    def class_log_posterior(self, x: torch.Tensor, t=None, sde: Optional[SDE] = None) -> torch.Tensor:
        """log p_t(y | x) for every class, shape (B, C) (normalised logits); `sde=None`: under p_0.

        The component log-densities log w_k N_k(x) are summed within each class by log-sum-exp
        after subtracting their row maximum, so the posterior is finite and normalised however far
        x lies from every mean: far from the data each term is about -|x|^2 / 2 s(t)^2, and adding
        that back before the subtraction (as `torch.logsumexp` does) rounded log(n_c) and log(K)
        away in float32 (at |x| = 1e4 every class came out with probability 1). The values keep
        the precision of x's dtype: pass float64 for posteriors far in the tails.
        """
        a, s = self._coeffs(x, t, sde)
        log_terms, _, _ = self._component_terms(x, a, s)  # (B, K)
        C = self.num_classes
        onehot = self.classes.to(x.device)[None, :, None] == torch.arange(C, device=x.device)[None, None, :]  # (1, K, C)
        onehot = onehot & (self.weights.to(x.device) > 0)[None, :, None]  # zero-weight components add nothing
        neg_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
        # a class without mass would be a log-sum-exp over -inf only, whose backward is 0 * nan = nan
        # even where its gradient is not asked for: it gets log p = -inf directly instead
        empty = ~onehot.any(1)  # (1, C)
        masked = torch.where(onehot, log_terms[:, :, None], neg_inf)
        top = log_terms.amax(dim=1, keepdim=True).detach()  # (B, 1), finite: some weight is > 0
        per_class = torch.logsumexp(torch.where(empty[:, None, :], 0.0, masked - top[:, :, None]), dim=1)
        per_class = torch.where(empty, neg_inf, per_class)
        return per_class - torch.logsumexp(log_terms - top, dim=1, keepdim=True)

    def class_score(self, x: torch.Tensor, y, t=None, sde: Optional[SDE] = None) -> torch.Tensor:
        """grad_x log p_t(x | y), shape (B, D): the score of the class's sub-mixture.

        Args:
            x: (B, D). y: an int class or (B,) classes in [0, C). t, sde: as in `score`.
        """
        return self._class_score(x, self.check_labels(y, x.shape[0], x.device), t, sde)

    def _class_score(self, x: torch.Tensor, y: torch.Tensor, t, sde: Optional[SDE]) -> torch.Tensor:
        """`class_score` without the label check (no host synchronisation): y is a (B,) integer
        tensor; a row whose y is no class of positive mass has no component left and comes out NaN."""
        a, s = self._coeffs(x, t, sde)
        log_terms, y_over_var, vecs = self._component_terms(x, a, s)
        # responsibilities within the class: components of other classes get weight 0
        inside = self._member(y).to(torch.bool)
        log_terms = torch.where(inside, log_terms, torch.tensor(-math.inf, dtype=x.dtype, device=x.device))
        resp = torch.softmax(log_terms, dim=1)[..., None]
        weighted = resp * y_over_var
        if vecs is None:
            return -weighted.sum(1)
        return -torch.einsum("bke,kde->bd", weighted, vecs)

    def conditional(self, c: int) -> "GaussianMixture":
        """The class-conditional data law p_0(x | y = c) as a mixture of the class's components."""
        c = int(self.check_labels(c, 1)[0])
        keep = self.classes == c
        w = self.weights[keep]
        return GaussianMixture(w / w.sum(), self.means[keep], self.covariances()[keep] if not self.diagonal
                               else self.eigvals[keep])

    def conditional_model(self, sde: SDE) -> "ExactConditionalScore":
        """The exact scores under `sde` as a conditional model `model(x, t, y=None)` (see `ExactConditionalScore`)."""
        return ExactConditionalScore(self, sde)

    def classifier(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact noise-conditional classifier `classifier(x, t) -> log p_t(y | x)`, shape (B, C)."""

        def exact_classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.class_log_posterior(x, t, sde)

        exact_classifier.num_classes = self.num_classes
        return exact_classifier

    def extra_repr(self) -> str:
        kind = "diagonal" if self.diagonal else "full"
        return f"num_components={self.num_components}, num_classes={self.num_classes}, dim={self.dim}, covariances={kind}"


class ExactConditionalScore(nn.Module):
    """An oracle's exact scores with the calling convention of a conditional `ScoreModel`.

    `model(x, t, y=None)` returns grad log p_t(x | y) for labels y in [0, C), and the
    unconditional score grad log p_t(x) where y is None or equals the no-label token C, the
    convention of the trained networks (`sde_gen.nets.fourier.TimeEmbedding`); a batch may mix
    both. So the guidance wrappers of `sde_gen.guidance` run on the exact answer unchanged.

    Args:
        oracle: the mixture (with its `classes` map). sde: the forward SDE.
    """

    def __init__(self, oracle: GaussianMixture, sde: SDE):
        super().__init__()
        self.oracle, self.sde = oracle, sde
        self.num_classes = oracle.num_classes
        self._stand_in = int(torch.argmax(oracle.class_weights()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if y is None:
            return self.oracle.score(x, t, self.sde)
        y = torch.as_tensor(y, device=x.device)
        if y.ndim == 0:
            y = y.expand(x.shape[0])
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be integer labels in [0, {self.num_classes}] ({self.num_classes} = no label); got dtype {y.dtype}")
        # Labels in host memory are range-checked here (free). On an accelerator the check would
        # synchronise the host on every call of a sampler loop, so it is left to the callers that
        # set labels up once (the guidance wrappers, the sample app): an out-of-range row there
        # has no component of its class and comes out NaN (caught by `check_finite`), never a
        # plausible wrong score.
        if y.device.type == "cpu" and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"y must lie in [0, {self.num_classes}] ({self.num_classes} = no label); got {sorted(set(y.tolist()))}")
        null = y == self.num_classes
        # no-label rows get a stand-in class of positive mass (its score is discarded below)
        cond = self.oracle._class_score(x, torch.where(null, self._stand_in, y), t, self.sde)
        return torch.where(null[:, None], self.oracle.score(x, t, self.sde), cond)


# ---- named problems used across tests, benchmarks and notebooks ----
def _ring2d() -> GaussianMixture:
    """2-D ring of 8 Gaussians, radius 2, std 0.2, weights proportional to 1, 2, ..., 8."""
    k = torch.arange(8, dtype=torch.float64)
    angles = 2 * math.pi * k / 8
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    weights = (k + 1) / (k + 1).sum()
    return GaussianMixture(weights, means, torch.full((8, 2), 0.2 ** 2, dtype=torch.float64))


def _mixture64d() -> GaussianMixture:
    """64-D mixture of 4 anisotropic (diagonal) Gaussians, weights 0.1 to 0.4, variances 0.01 to 0.5."""
    g = torch.Generator().manual_seed(64)
    K, D = 4, 64
    means = 0.75 * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_var = math.log(0.01) + (math.log(0.5) - math.log(0.01)) * torch.rand(K, D, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    return GaussianMixture(weights, means, torch.exp(log_var))


def _gaussian16d() -> GaussianMixture:
    """16-D Gaussian with a full covariance: random rotation, eigenvalues geometric from 0.05 to 2."""
    g = torch.Generator().manual_seed(16)
    D = 16
    mean = 0.5 * torch.randn(D, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    eig = torch.logspace(math.log10(0.05), math.log10(2.0), D, dtype=torch.float64)
    cov = q @ torch.diag(eig) @ q.T
    return GaussianMixture.gaussian(mean, 0.5 * (cov + cov.T))


#: preset name -> constructor
PRESETS: Dict[str, Callable[[], GaussianMixture]] = {
    "ring2d": _ring2d,
    "mixture64d": _mixture64d,
    "gaussian16d": _gaussian16d,
}


def make_preset(name: str) -> GaussianMixture:
    """Build a named oracle problem: one of `"ring2d"`, `"mixture64d"`, `"gaussian16d"`."""
    check_choice("preset", name, PRESETS)
    return PRESETS[name]()
