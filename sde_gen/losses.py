"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7).

    L(theta) = E_t E_{x_0} E_z [ 1/2 lambda(t) || s_theta(x_t, t) + z / s(t) ||^2 ],
    x_t = a(t) x_0 + s(t) z,  t ~ U(eps, T),

since grad log p(x_t | x_0) = -z / s(t). Weightings lambda(t):
    "sigma2"      lambda = s(t)^2 (Song et al. 2021 default; equals the noise-prediction loss),
    "likelihood"  lambda = g(t)^2 (Song, Durkan et al. 2021, "Maximum likelihood training of
                  score-based diffusion models", Thm. 1: the loss bounds the negative log-likelihood),
    "none"        lambda = 1,
    "edm"         lambda = s(t)^2 (sigma^2 + sigma_data^2) / sigma_data^2 with sigma = s(t) / a(t): the
                  EDM weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on ||D(x~; sigma) - x_0||^2
                  (Karras et al. 2022, Table 1 and eq. 8), rewritten for the score residual, since
                  || score + z / s ||^2 = ||D - x_0||^2 / (sigma s)^2. With `ScoreModel(parameterization="edm")`
                  the loss is 1/2 || F - F_target ||^2, the preconditioned network's unit-variance target.

Training times ("time_distribution"):
    "uniform"     t ~ U(eps, T) (Song et al. 2021),
    "log_normal"  ln sigma ~ N(P_mean, P_std^2) with sigma = s(t) / a(t) (Karras et al. 2022, Table 1;
                  P_mean = -1.2, P_std = 1.2), i.e. t = lambda^{-1}(-ln sigma), clamped to [eps, T]
                  (the SDE has no noise level beyond its time range).

Importance sampling for the likelihood weighting: for any SDE with affine marginals,
d lambda_snr/dt = -g(t)^2 / (2 s(t)^2) where lambda_snr(t) = log(a(t) / s(t)), so drawing the
half log-SNR uniformly on [lambda_snr(T), lambda_snr(eps)] draws t with density proportional to
g^2 / s^2. The importance weight g^2 / (s^2 p(t)) is then the constant 2 (lambda_snr(eps) - lambda_snr(T)),
and the variance of the estimator drops sharply near t = eps (Song, Durkan et al. 2021, Sec. 5).

Conditional training: with class labels y the network learns the class-conditional score
grad log p_t(x_t | y) by the same regression, s_theta(x_t, t, y) (the DSM target -z / s(t) does not
depend on y). Classifier-free guidance (Ho & Salimans 2021, Sec. 3.2) trains one network for both
the conditional and the unconditional score by replacing each label, with probability p_uncond,
by the "no label" token C (`drop_labels`).

Noise-conditional classifier (Song et al. 2021, Sec. 5 and App. I; Dhariwal & Nichol 2021, Sec. 4):
a network p_phi(y | x_t, t) trained by cross-entropy on perturbed data,

    L(phi) = E_t E_{(x_0, y)} E_z [ -log p_phi(y | a(t) x_0 + s(t) z, t) ],   t ~ U(eps, T),

whose gradient grad_x log p_phi(y | x, t) guides an unconditional score towards class y.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from ._validation import check_choice, check_finite, check_positive
from .sdes import SDE
from .utils import append_dims

__all__ = ["WEIGHTINGS", "REDUCTIONS", "TIME_DISTRIBUTIONS", "sample_time", "dsm_loss", "DenoisingScoreMatching", "drop_labels",
           "NoiseConditionalCrossEntropy", "LOSSES"]

WEIGHTINGS = ("sigma2", "likelihood", "none", "edm")
TIME_DISTRIBUTIONS = ("uniform", "log_normal")
REDUCTIONS = ("mean", "sum")


def _check_options(weighting: str, importance_sampling: bool, reduction: str,
                   time_distribution: str = "uniform", p_std: float = 1.2, sigma_data: float = 0.5,
                   p_mean: float = -1.2) -> None:
    check_choice("weighting", weighting, WEIGHTINGS)
    check_finite("p_mean", p_mean)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("time_distribution", time_distribution, TIME_DISTRIBUTIONS)
    check_positive("p_std", p_std)
    check_positive("sigma_data", sigma_data)
    if importance_sampling and weighting != "likelihood":
        raise ValueError(
            f"importance_sampling=True needs weighting='likelihood'; got weighting={weighting!r}"
        )
    if importance_sampling and time_distribution != "uniform":
        raise ValueError(
            "importance_sampling=True draws its own times and needs time_distribution='uniform'; "
            f"got time_distribution={time_distribution!r}"
        )


def sample_time(
    sde: SDE,
    batch_size: int,
    importance_sampling: bool = False,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    distribution: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
):
    """Draw training times.

    Args:
        sde: the forward SDE (provides eps, T and the half log-SNR).
        batch_size: B.
        importance_sampling: draw t with density proportional to g(t)^2 / s(t)^2 instead of U(eps, T).
        generator, device, dtype: of the result; device None follows the generator.
        distribution: "uniform" (t ~ U(eps, T)) or "log_normal" (ln sigma ~ N(p_mean, p_std^2),
            sigma = s(t) / a(t), Karras et al. 2022; t clamped to [eps, T]).
        p_mean, p_std: the log-normal's parameters (only for "log_normal").

    Returns:
        `(t, weight)`, each of shape (B,): the times and the importance weight 1 / (p(t) (T - eps))
        relative to uniform sampling (ones unless `importance_sampling`: the log-normal draw is
        a different training distribution, not an importance sample of the uniform one).
    """
    if device is None and generator is not None:
        device = generator.device
    check_choice("time_distribution", distribution, TIME_DISTRIBUTIONS)
    if distribution == "log_normal":
        if importance_sampling:
            raise ValueError("importance_sampling=True needs time_distribution='uniform'; got 'log_normal'")
        n = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64)
        t = sde.time_at_half_log_snr(-(p_mean + p_std * n)).clamp(sde.eps, sde.T)
        return t.to(dtype), torch.ones(batch_size, device=device, dtype=dtype)
    u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    if not importance_sampling:
        t = sde.eps + (sde.T - sde.eps) * u
        return t.to(dtype), torch.ones(batch_size, device=device, dtype=dtype)
    ends = torch.tensor([sde.T, sde.eps], device=device, dtype=torch.float64)
    lam_T, lam_eps = sde.half_log_snr(ends).unbind()
    t = sde.time_at_half_log_snr(lam_T + (lam_eps - lam_T) * u).clamp(sde.eps, sde.T)
    g2_over_s2 = sde.diffusion(t) ** 2 / sde.marginal_var(t)
    density = g2_over_s2 / (2 * (lam_eps - lam_T))
    weight = 1.0 / (density * (sde.T - sde.eps))
    return t.to(dtype), weight.to(dtype)


def dsm_loss(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x0: torch.Tensor,
    weighting: str = "sigma2",
    importance_sampling: bool = False,
    reduction: str = "mean",
    generator: Optional[torch.Generator] = None,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    y: Optional[torch.Tensor] = None,
    time_distribution: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Per-sample denoising score-matching loss.

    Args:
        score_fn: `score_fn(x, t)` returning a tensor like `x`; `score_fn(x, t, y)` when `y` is given.
        sde: the forward SDE.
        x0: data batch (B, *event).
        weighting: "sigma2", "likelihood" or "none" (see module docstring).
        importance_sampling: draw t proportionally to g^2 / s^2 (only with weighting="likelihood").
        reduction: "mean" or "sum" over the event dimensions.
        generator: randomness for t and z.
        t, noise: fix the times (B,) and the noise (like x0) instead of drawing them.
        y: (B,) long class labels passed to `score_fn` (conditional training); None calls
            `score_fn(x, t)` exactly as an unconditional model expects.
        time_distribution, p_mean, p_std: how t is drawn (`sample_time`'s `distribution`).
        sigma_data: the data's standard deviation in the "edm" weighting.

    Returns:
        (B,) losses 1/2 lambda(t) || score + z / s(t) ||^2, reduced over the event dimensions and
        multiplied by the importance weight.

    Raises:
        ValueError: an unknown `weighting` or `reduction`, or importance sampling without the
            likelihood weighting, an unknown `time_distribution`, a non-positive `p_std` or
            `sigma_data` (checked on every call; `DenoisingScoreMatching` checks once).
    """
    _check_options(weighting, importance_sampling, reduction, time_distribution, p_std, sigma_data, p_mean)
    return _dsm(score_fn, sde, x0, weighting, importance_sampling, reduction, generator, t, noise, y,
                time_distribution, p_mean, p_std, sigma_data)


def _dsm(score_fn, sde: SDE, x0: torch.Tensor, weighting: str, importance_sampling: bool, reduction: str,
         generator: Optional[torch.Generator], t: Optional[torch.Tensor] = None,
         noise: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
         time_distribution: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2,
         sigma_data: float = 0.5, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`dsm_loss` with options already checked (the per-step path of `DenoisingScoreMatching`);
    `weight` is the importance weight of given times `t` (ones when None)."""
    B = x0.shape[0]
    if t is None:
        t, iw = sample_time(sde, B, importance_sampling, generator, device=x0.device, dtype=x0.dtype,
                            distribution=time_distribution, p_mean=p_mean, p_std=p_std)
    else:
        iw = torch.ones(B, device=x0.device, dtype=x0.dtype) if weight is None else weight
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = sde.perturb(x0, t, noise)
    std = sde.marginal_std(t).to(x0.dtype)
    # an unconditional score_fn may take only (x, t): y is passed only when there is one
    score = score_fn(x_t, t) if y is None else score_fn(x_t, t, y)
    # s * score + z is the residual of the noise prediction; divide by s for the score residual
    resid = append_dims(std, x0.ndim) * score + noise
    sq = resid.flatten(1).pow(2)
    sq = sq.mean(1) if reduction == "mean" else sq.sum(1)
    if weighting == "sigma2":
        lam_over_s2 = torch.ones_like(std)
    elif weighting == "likelihood":
        lam_over_s2 = (sde.diffusion(t) ** 2 / sde.marginal_var(t)).to(x0.dtype)
    elif weighting == "edm":
        # lambda / s^2 = sigma^2 lambda_EDM(sigma) = (sigma^2 + sigma_data^2) / sigma_data^2, sigma = s / a
        a, s = sde.marginal_coeffs(t)
        lam_over_s2 = (1.0 + (s / a) ** 2 / sigma_data ** 2).to(x0.dtype)
    else:
        lam_over_s2 = 1.0 / std ** 2
    return 0.5 * lam_over_s2 * sq * iw


class DenoisingScoreMatching(nn.Module):
    """The DSM objective configured once; calling it returns the batch mean of `dsm_loss`.

    The `loss:` node of the training config (`conf/loss/dsm.yaml`). The options are checked here,
    once, when the node is built at start-up (a bad one fails as "loss: weighting must be one of
    [...]"), not on every step.

    Args:
        weighting: "sigma2", "likelihood" or "none" (module docstring).
        importance_sampling: draw t proportionally to g^2 / s^2 (needs weighting="likelihood").
        reduction: "mean" or "sum" over the event dimensions.
        time_distribution: "uniform" or "log_normal" (module docstring).
        p_mean, p_std: ln sigma ~ N(p_mean, p_std^2) for "log_normal" (Karras et al. 2022: -1.2, 1.2).
        sigma_data: the data's standard deviation in the "edm" weighting (Karras et al. 2022: 0.5).

    Call: `loss(score_fn, sde, x0 (B, *event), generator, y=None)` -> scalar; `y` (B,) labels
    are passed on to `score_fn(x_t, t, y)` (conditional training). `draw(sde, x0, generator)`
    makes the random draws of one call (t, z and the importance weight) in the call's order, so
    that distributed training can draw them for the global batch and give each process its slice
    (`loss(..., **draws_slice)`): the same numbers as one process on the whole batch.
    """

    #: what the training loop builds for this loss: a score model (`sde_gen.nets.build_score_model`)
    trains = "score"

    def __init__(self, weighting: str = "sigma2", importance_sampling: bool = False, reduction: str = "mean",
                 time_distribution: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_data: float = 0.5):
        super().__init__()
        _check_options(weighting, importance_sampling, reduction, time_distribution, p_std, sigma_data, p_mean)
        self.weighting, self.reduction = weighting, reduction
        self.importance_sampling = bool(importance_sampling)
        self.time_distribution = time_distribution
        self.p_mean, self.p_std, self.sigma_data = float(p_mean), float(p_std), float(sigma_data)

    def draw(self, sde: SDE, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """The draws a call on `x0` makes, in its order: {"t": (B,), "noise": like x0, "weight": (B,)}."""
        t, iw = sample_time(sde, x0.shape[0], self.importance_sampling, generator, device=x0.device, dtype=x0.dtype,
                            distribution=self.time_distribution, p_mean=self.p_mean, p_std=self.p_std)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return {"t": t, "noise": noise, "weight": iw}

    def forward(self, score_fn, sde: SDE, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                y: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                weight: Optional[torch.Tensor] = None):
        return _dsm(score_fn, sde, x0, self.weighting, self.importance_sampling, self.reduction, generator, t, noise, y,
                    self.time_distribution, self.p_mean, self.p_std, self.sigma_data, weight).mean()

    def extra_repr(self) -> str:
        return (f"weighting={self.weighting!r}, importance_sampling={self.importance_sampling}, reduction={self.reduction!r}, "
                f"time_distribution={self.time_distribution!r}, p_mean={self.p_mean}, p_std={self.p_std}, "
                f"sigma_data={self.sigma_data}")


def drop_labels(y: torch.Tensor, p: float, num_classes: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Classifier-free training: replace each label by the "no label" token with probability `p`.

    Ho & Salimans 2021, Alg. 1 (p_uncond). The token is `num_classes`, the extra row of the
    networks' label embedding (`sde_gen.nets.TimeEmbedding`), which a conditional network also
    receives for `y=None`; so one network learns the conditional and the unconditional score.

    Args:
        y: (B,) long labels in [0, num_classes).
        p: the dropout probability, in [0, 1].
        num_classes: C (the token's index).
        generator: draws the (B,) uniform numbers of the mask (on y's device); one draw of B
            numbers per call, whatever `p`, so the stream does not depend on its value.

    Returns:
        (B,) long labels: y where kept, C where dropped.
    """
    u = torch.rand(y.shape, generator=generator, device=y.device, dtype=torch.float64)
    return torch.where(u < p, torch.full_like(y, num_classes), y)


class NoiseConditionalCrossEntropy(nn.Module):
    """Cross-entropy of a noise-conditional classifier on perturbed data (module docstring).

    The `loss:` node `conf/loss/classifier.yaml`. The times come from `sample_time` (t ~ U(eps, T),
    the score model's default), then the noise: x_t = a(t) x_0 + s(t) z.

    Call: `loss(classifier, sde, x0 (B, *event), generator, y (B,) long)` -> scalar, the batch
    mean of -log softmax(classifier(x_t, t))[y]; `classifier(x, t)` returns (B, C) logits.
    """

    #: what the training loop builds for this loss: a classifier (`sde_gen.nets.build_classifier`)
    trains = "classifier"

    def draw(self, sde: SDE, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """The draws a call on `x0` makes, in its order: {"t": (B,), "noise": like x0}."""
        t, _ = sample_time(sde, x0.shape[0], False, generator, device=x0.device, dtype=x0.dtype)
        return {"t": t, "noise": torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)}

    def forward(self, classifier, sde: SDE, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                y: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args as in the class docstring; `t` (B,) and `noise` (like x0) fix the draws (tests)."""
        if y is None:
            raise ValueError("NoiseConditionalCrossEntropy needs the labels y of x0")
        if t is None:
            t, _ = sample_time(sde, x0.shape[0], False, generator, device=x0.device, dtype=x0.dtype)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        logits = classifier(sde.perturb(x0, t, noise), t)
        return nn.functional.cross_entropy(logits, y)


#: losses a config (and a stored checkpoint config) may build: config name -> class
LOSSES = {"dsm": DenoisingScoreMatching, "classifier": NoiseConditionalCrossEntropy}
