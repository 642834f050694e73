"""Guidance as score wrappers: every sampler works unchanged on a guided score.

Both methods sample from a "tilted" law p_t^s(x | y) proportional to p_t(x) p_t(y | x)^s, whose score is

    grad log p_t(x) + s grad log p_t(y | x)                      (Dhariwal & Nichol 2021, eq. 14 form)

*Classifier guidance* takes grad log p_t(y | x) from a noise-conditional classifier by autograd.
*Classifier-free guidance* (Ho & Salimans 2021) uses Bayes' rule, grad log p_t(y | x) =
grad log p_t(x | y) - grad log p_t(x), with both scores from one conditional network trained with
label dropout:

    score_s = score(x | none) + s (score(x | y) - score(x | none)),

the same combination as the usual noise-space formula, since eps = -s(t) score is linear in the
score. Scale s = 1 is plain conditional sampling, s = 0 unconditional sampling, s > 1 sharpens
the class (trading diversity for purity).

Cost accounting: a sampler's NFE counts calls of the score function it is given. One call of a
`classifier_free` score at s not in {0, 1} is one network forward on a batch of 2B (conditional
and unconditional halves together); `GuidedScore.batch_cost` (2 here, 1 at s in {0, 1}) converts
NFE to the batch-equivalent cost, NFE x batch_cost forwards of batch B. A `classifier_guided` call
is one score evaluation plus a classifier forward and backward (batch_cost 1 score forward; its
wall-time overhead is measured in benchmarks/bench_guidance.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

__all__ = ["GuidedScore", "classifier_free", "classifier_guided", "resolve_labels"]

Labels = Union[int, torch.Tensor]


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite real number (0: unconditional, 1: conditional, > 1: sharper); got {scale!r}")
    return float(scale)


def _class_count(obj, num_classes, who: str, what: str) -> int:
    """C from `num_classes` or `obj.num_classes`; both given must agree."""
    def positive_int(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{who}: {name} must be a positive int; got {value!r}")
        return value

    own = getattr(obj, "num_classes", None)
    if num_classes is not None:
        num_classes = positive_int(num_classes, "num_classes")
        if own is not None and own != num_classes:
            raise ValueError(f"{who}: num_classes={num_classes!r} but the {what} has num_classes={own!r}; "
                             "they must be the same number of classes")
        return num_classes
    if own is None:
        if what == "model":
            raise ValueError(f"{who} needs a class-conditional model (num_classes set, labels 0..C-1 and the "
                             "no-label token C); got an unconditional one")
        raise ValueError(f"{who} needs the {what}'s number of classes: pass num_classes=C or give the {what} "
                         "a num_classes attribute")
    return positive_int(own, f"the {what}'s num_classes")


def _check_callable(name: str, fn, who: str) -> None:
    if not callable(fn):
        raise ValueError(f"{who} needs a callable {name}; got {fn!r}")


def resolve_labels(y: Labels, num_classes: int, batch: Optional[int] = None, device=None) -> torch.Tensor:
    """Class labels as a long tensor: an int (every sample) or a 1-D tensor / list of ints in [0, C).

    Args:
        y: the labels. num_classes: C. batch: the expected number of labels (an int is expanded
            to it). device: of the result.

    Raises:
        ValueError naming `label`, the allowed range and what was given.
    """
    if isinstance(y, bool):
        raise ValueError(f"label must be an int class or a list of them in [0, {num_classes}); got {y!r}")
    try:
        out = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"label must be an int class or a list of them in [0, {num_classes}); got {y!r}") from err
    if out.is_floating_point() or out.is_complex() or out.dtype == torch.bool or out.ndim > 1:
        raise ValueError(f"label must be an int class or a 1-D list of them in [0, {num_classes}); got {y!r}")
    if out.ndim == 0:
        if batch is None:
            out = out[None]
        else:
            out = out.expand(batch)
    if batch is not None and out.shape[0] != batch:
        raise ValueError(f"label: {out.shape[0]} labels for a batch of {batch}; give one int or one label per sample")
    # the range check syncs once, when the labels are set up, never inside a sampler loop
    bad = (out < 0) | (out >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"label must lie in [0, {num_classes}) ({num_classes} classes); got {sorted(set(out[bad].tolist()))}")
    return out.long()


class GuidedScore:
    """A guided score function `score(x, t)` with its cost per call (see the module docstring).

    Attributes:
        batch_cost: network forwards of batch B per call (2 for classifier-free guidance at
            scale not in {0, 1}, else 1). NFE x batch_cost is the batch-equivalent cost.
        scale, kind ("cfg" or "classifier"), num_classes.
    """

    def __init__(self, fn: Callable, kind: str, scale: float, batch_cost: int, num_classes: int):
        self._fn, self.kind, self.scale, self.batch_cost, self.num_classes = fn, kind, scale, batch_cost, num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._fn(x, t)

    def __repr__(self) -> str:
        return f"GuidedScore(kind={self.kind!r}, scale={self.scale}, num_classes={self.num_classes})"


class _Labels:
    """The checked labels of a guided score, copied once to each device they are asked for on."""

    def __init__(self, labels: torch.Tensor):
        self._on = {labels.device: labels}

    def for_batch(self, x: torch.Tensor) -> torch.Tensor:
        """One label per row of x (a single label is expanded; checked by shape only, no sync)."""
        y = self._on.get(x.device)
        if y is None:
            y = self._on[x.device] = next(iter(self._on.values())).to(x.device)
        if y.shape[0] == 1:
            return y.expand(x.shape[0])
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"label: {y.shape[0]} labels for a batch of {x.shape[0]}; give one int or one label per sample")
        return y


def classifier_free(model: Callable, y: Labels, scale: float, num_classes: Optional[int] = None) -> GuidedScore:
    """Classifier-free guidance for a conditional model `model(x, t, y)`.

    Args:
        model: a conditional score model (`ScoreModel` with `num_classes`, or an oracle's
            `ExactConditionalScore`) taking labels in [0, C) and the no-label token C.
        y: the requested class: an int for every sample, or a (B,) tensor of classes.
        scale: the guidance scale s (0: unconditional, 1: conditional).
        num_classes: C, when `model` does not carry a `num_classes` attribute (if it does, the
            two must agree).

    Returns:
        `GuidedScore` computing score(x | C) + s (score(x | y) - score(x | C)) with one forward
        of batch 2B (one of batch B when s is 0 or 1).

    Raises:
        ValueError: a model that is not callable or unconditional, a label outside [0, C) or not
            an integer, a non-finite scale, a num_classes that disagrees with the model's.
    """
    who = "classifier-free guidance"
    _check_callable("model", model, who)
    C = _class_count(model, num_classes, who, "model")
    s = _check_scale(scale)
    labels = _Labels(resolve_labels(y, C))

    if s == 1.0:
        def guided(x, t):
            return model(x, t, labels.for_batch(x))
    elif s == 0.0:
        def guided(x, t):
            return model(x, t, torch.full((x.shape[0],), C, dtype=torch.long, device=x.device))
    else:
        def guided(x, t):
            lab = labels.for_batch(x)
            # one forward of batch 2B: the conditional half, then the no-label half
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lab, torch.full_like(lab, C)]))
            cond, uncond = both.chunk(2)
            return uncond + s * (cond - uncond)

    return GuidedScore(guided, "cfg", s, 1 if s in (0.0, 1.0) else 2, C)


def classifier_guided(score_fn: Callable, classifier: Callable, y: Labels, scale: float,
                      num_classes: Optional[int] = None) -> GuidedScore:
    """Classifier guidance: score(x, t) + s grad_x log p(y | x, t) from a noise-conditional classifier.

    Args:
        score_fn: the unconditional score `score_fn(x, t)`.
        classifier: `classifier(x, t) -> logits (B, C)` (normalised or not: log-softmax is applied).
        y: an int class for every sample, or a (B,) tensor of classes.
        scale: the guidance scale s (0 returns the unconditional score without calling the classifier).
        num_classes: C, when `classifier` has no `num_classes` attribute (if it has, the two must
            agree); the logits' width is checked against it on every call (shape only, no host sync).

    The gradient is taken by autograd under `torch.enable_grad()`, so the wrapper works inside
    the samplers' `torch.no_grad()` loops (and under `torch.inference_mode()`, on copies of x and
    t); nothing is kept in the graph after the call.

    Raises:
        ValueError: no classifier (or a score or classifier that is not callable), a label outside
            [0, C) or not an integer, a classifier whose logits have another width or whose
            num_classes disagrees with `num_classes`, a non-finite scale.
    """
    who = "classifier guidance"
    _check_callable("score_fn", score_fn, who)
    _check_callable("classifier", classifier, who)
    C = _class_count(classifier, num_classes, who, "classifier")
    s = _check_scale(scale)
    labels = _Labels(resolve_labels(y, C))

    def guided(x, t):
        base = score_fn(x, t)
        if s == 0.0:
            return base
        lab = labels.for_batch(x)
        # inference tensors cannot enter a graph: leave inference mode and copy x and t
        inference = x.is_inference() or t.is_inference()
        with torch.inference_mode(False), torch.enable_grad():
            xg = (x.clone() if inference else x.detach()).requires_grad_(True)
            logits = classifier(xg, t.clone() if inference else t)
            if logits.ndim != 2 or logits.shape[1] != C:
                raise ValueError(f"classifier: logits must have shape (B, {C}) for {C} classes; got {tuple(logits.shape)}")
            log_p = torch.log_softmax(logits, dim=1).gather(1, lab[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return base + s * grad.to(base.dtype)

    return GuidedScore(guided, "classifier", s, 1, C)
