"""Schemas of the apps' plain sections: `EvalConf` (with `LikelihoodOptionsConf`) for sde-gen-eval and
`SampleAppConf` for sde-gen-sample.

Dataclasses whose `__post_init__` checks ranges, so `sde_gen.config.validate` fails at start-up with
one line naming the field and its allowed values (the training schema `TrainConf` is in `config.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from ._validation import (
    check_choice,
    check_finite,
    check_in_open_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from .config import check_target_names
from .inverse import CONDITIONS, COVARIANCES, MASKS
from .oracles import PRESETS
from .precision import PRECISIONS

__all__ = ["InceptionConf", "EvalInceptionConf", "LikelihoodOptionsConf", "EvalConf", "GuidanceConf", "InverseConf", "SampleAppConf", "register_app_schemas",
           "GUIDANCE_KINDS", "TASKS"]

#: where an app's score comes from: an oracle's exact score, or a training checkpoint's network
SOURCES = ("oracle", "checkpoint")
#: the dtypes an app computes in
DTYPES = ("float32", "float64")


def _check_source(conf) -> None:
    """The checks both apps share: trusted targets, `source`, and the `problem` or `checkpoint` it needs."""
    check_target_names("trusted_targets", conf.trusted_targets)
    check_choice("source", conf.source, SOURCES)
    if conf.source == "oracle":
        check_choice("problem", conf.problem, PRESETS)
    elif not conf.checkpoint:
        raise ValueError(f"checkpoint must be a file path when source=checkpoint; got {conf.checkpoint!r}")


@dataclasses.dataclass
class InceptionConf:
    """FID / KID in Inception-v3 features (`sde_gen.inception`) for image checkpoints; off while
    `weights` is null.

    Attributes:
        weights: path of the converted TensorFlow Inception weights `pt_inception-2015-12-05-6726825d.pth`
            (nothing is downloaded; a missing file is one error line saying where to put it).
        cache_dir: folder of the cached reference statistics (null: `sde_gen.inception.default_cache_dir()`,
            "": no cache).
        resize: the network's input size: 299 for FIDs comparable with published ones (>= 75).
        batch_size: images per Inception forward pass.
        reference_size: test images the reference statistics use (null: the whole test split).
    """

    weights: Optional[str] = None
    cache_dir: Optional[str] = None
    resize: int = 299
    batch_size: int = 50
    reference_size: Optional[int] = None

    def __post_init__(self):
        if self.weights is not None and not str(self.weights).strip():
            raise ValueError("inception.weights must be a file path or null (FID off); got an empty string")
        if isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 75:
            raise ValueError(f"inception.resize must be an integer >= 75 (299 for standard FID); got {self.resize!r}")
        check_positive_int("inception.batch_size", self.batch_size)
        if self.reference_size is not None and (isinstance(self.reference_size, bool) or self.reference_size < 2):
            raise ValueError(f"inception.reference_size must be an integer >= 2 or null (the whole test split); "
                             f"got {self.reference_size!r}")


@dataclasses.dataclass
class EvalInceptionConf(InceptionConf):
    """`InceptionConf` plus how sde-gen-eval draws the samples it scores (a sampler of `sde_gen.samplers`).

    Attributes:
        num_samples: samples drawn from the checkpoint (>= 2).
        sampler: a sampler name (a key of `sde_gen.samplers.SAMPLERS`).
        nfe: its score evaluations per sample.
    """

    num_samples: int = 1000
    sampler: str = "dpm_solver"
    nfe: int = 20

    def __post_init__(self):
        from .samplers import SAMPLERS

        super().__post_init__()
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise ValueError(f"inception.num_samples must be an integer >= 2; got {self.num_samples!r}")
        check_choice("inception.sampler", self.sampler, SAMPLERS)
        check_positive_int("inception.nfe", self.nfe)


# ---- sde-gen-eval (the likelihood app, sde_gen/apps/evaluate.py) ----
_EVAL_PRIORS = ("standard", "exact")


@dataclasses.dataclass
class LikelihoodOptionsConf:
    """ODE options of `sde_gen.likelihood.log_likelihood` (see there); `prior` picks the density at T:
    "standard" = the SDE's N(0, prior_std^2 I), "exact" = the oracle's exact p_T (oracle data only).
    `kind` = "ode" (the probability-flow ODE) or "elbo" (the discrete chain's bound, `sde_gen.elbo`, with
    `num_steps`, `variance`, `grid`, and Gamma / the residual from `gamma_samples` training points,
    cached in `gamma_cache` (null: the run folder))."""

    method: Optional[str] = None
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "exact"
    num_probes: int = 1
    probe: str = "rademacher"
    t_min: Optional[float] = None
    fixed_steps: Optional[int] = None
    time_variable: str = "t"
    prior: str = "standard"
    kind: str = "ode"
    num_steps: int = 100
    variance: str = "analytic"
    grid: str = "uniform"
    gamma_samples: int = 1000
    gamma_cache: Optional[str] = None

    def __post_init__(self):
        from .likelihood import ADAPTIVE_METHODS, DIVERGENCES, FIXED_GRID_METHODS, PROBES, TIME_VARIABLES

        if self.method is not None:
            check_choice("likelihood.method", self.method, ADAPTIVE_METHODS + FIXED_GRID_METHODS)
        check_positive("likelihood.rtol", self.rtol)
        check_positive("likelihood.atol", self.atol)
        check_choice("likelihood.divergence", self.divergence, DIVERGENCES)
        check_positive_int("likelihood.num_probes", self.num_probes)
        check_choice("likelihood.probe", self.probe, PROBES)
        if self.t_min is not None and not self.t_min > 0:
            # the score divides by s(t_min), which is 0 at t = 0; the upper end (T) is checked
            # against the SDE by log_likelihood
            raise ValueError(f"likelihood.t_min must be in (0, T) (or null for sde.eps); got {self.t_min!r}")
        if self.fixed_steps is not None:
            check_positive_int("likelihood.fixed_steps", self.fixed_steps)
        check_choice("likelihood.time_variable", self.time_variable, TIME_VARIABLES)
        check_choice("likelihood.prior", self.prior, _EVAL_PRIORS)
        from .likelihood import ELBO_VARIANCES
        from .samplers.grids import GRIDS

        check_choice("likelihood.kind", self.kind, ("ode", "elbo"))
        check_positive_int("likelihood.num_steps", self.num_steps)
        check_choice("likelihood.variance", self.variance, ELBO_VARIANCES)
        check_choice("likelihood.grid", self.grid, GRIDS)
        check_positive_int("likelihood.gamma_samples", self.gamma_samples)
        if self.kind == "elbo" and self.prior != "standard":
            raise ValueError(f"likelihood.prior must be 'standard' with likelihood.kind=elbo (the chain's L_T is "
                             f"against the SDE's prior); got {self.prior!r}")


@dataclasses.dataclass
class EvalConf:
    """Options of the `sde-gen-eval` app (conf/eval.yaml). `sde` is the sde/ group (oracle source)."""

    sde: Any = None
    source: str = "oracle"
    checkpoint: Optional[str] = None
    ema: bool = True
    problem: str = "gaussian16d"
    num_test: Optional[int] = 1000
    batch_size: int = 500
    num_dequant: int = 1
    device: str = "auto"
    dtype: str = "float64"
    seed: int = 0
    progress: bool = True
    likelihood: LikelihoodOptionsConf = dataclasses.field(default_factory=LikelihoodOptionsConf)
    inception: EvalInceptionConf = dataclasses.field(default_factory=EvalInceptionConf)
    #: `_target_` strings of your own that a checkpoint's config may build (never read from the checkpoint)
    trusted_targets: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        _check_source(self)
        if self.num_test is not None:
            check_positive_int("num_test", self.num_test)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("num_dequant", self.num_dequant)
        check_choice("dtype", self.dtype, DTYPES)


def register_app_schemas() -> None:
    """Store the apps' schemas that a YAML extends (`eval_schema`); run by `config.register_configs`."""
    ConfigStore.instance().store(name="eval_schema", node=EvalConf)


# ---- sde-gen-sample (sde_gen/apps/sample.py) ----
#: how sde-gen-sample steers samples towards the requested classes (see `GuidanceConf`)
GUIDANCE_KINDS = ("none", "cfg", "classifier")
_LABEL_HELP = "null (every class, equal shares), a class index >= 0, or a list of distinct class indices"


def _check_label(label) -> None:
    """The form of `label` (its upper end, the number of classes, is known once the source is loaded)."""
    if label is None:
        return
    items = label if isinstance(label, (list, tuple)) else [label]
    ok = len(items) > 0 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in items)
    if not ok:
        raise ValueError(f"label must be {_LABEL_HELP}; got {label!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"label must list each class at most once (each listed class gets an equal share); got {label!r}")


@dataclasses.dataclass
class GuidanceConf:
    """The `guidance:` node of sde-gen-sample (see `sde_gen.guidance`).

    Attributes:
        kind: "none" (the model's own score: unconditional, or plain class-conditional sampling
            when `label` is given), "cfg" (classifier-free guidance: a class-conditional model,
            or the oracle's exact conditional scores) or "classifier" (classifier guidance: the
            unconditional score plus the gradient of a noise-conditional classifier's log p(y | x);
            the oracle's exact classifier, or the run named by `classifier`).
        scale: the guidance scale s of the tilted law p_t(x) p_t(y | x)^s: 0 unconditional, 1 plain
            conditional, > 1 sharper classes. Only with kind cfg or classifier (kind none is s = 1).
    """

    kind: str = "none"
    scale: float = 1.0

    def __post_init__(self):
        check_choice("guidance.kind", self.kind, GUIDANCE_KINDS)
        check_finite("guidance.scale", self.scale)
        if self.kind == "none" and self.scale != 1.0:
            # a sweep over scales without a kind would write identical runs under different names
            raise ValueError(f"guidance.scale applies to guidance.kind=cfg or classifier (kind=none samples at scale 1); "
                             f"got guidance.scale={self.scale!r} with guidance.kind=none")


#: what sde-gen-sample does: plain sampling, or an inverse problem (see `InverseConf`)
TASKS = ("sample", "inpaint", "colorize", "linear")


@dataclasses.dataclass
class InverseConf:
    """The `inverse:` node of sde-gen-sample for task=inpaint|colorize|linear (see `sde_gen.inverse`).

    Attributes:
        method: the conditioning method: replacement, repaint, dps, tweedie_moment or exact_conditional.
        mask: inpainting mask preset (`sde_gen.inverse.mask_preset`): half, random or box.
        missing: the fraction of unknown entries for mask=random and mask=box, in (0, 1).
        noise_std: sigma_y of y = A x + e (>= 0).
        num_observations: m for task=linear (a random projection; null: D // 2).
        observation_seed: seed of the true x_0, the observation noise, the random mask and A.
        covariance: tweedie_moment's covariance model: full, cg or scalar (`TweedieMoment`).
        cg_iters: tweedie_moment's conjugate-gradient iterations for covariance=cg (>= 1).
    """

    method: str = "repaint"
    mask: str = "half"
    missing: float = 0.7
    noise_std: float = 0.0
    num_observations: Optional[int] = None
    observation_seed: int = 1
    covariance: str = "full"
    cg_iters: int = 4

    def __post_init__(self):
        check_choice("inverse.method", self.method, CONDITIONS)
        check_choice("inverse.covariance", self.covariance, COVARIANCES)
        check_positive_int("inverse.cg_iters", self.cg_iters)
        check_choice("inverse.mask", self.mask, MASKS)
        check_in_open_interval("inverse.missing", self.missing, 0.0, 1.0)
        check_nonnegative("inverse.noise_std", self.noise_std)
        if self.num_observations is not None:
            check_positive_int("inverse.num_observations", self.num_observations)


@dataclasses.dataclass
class SampleAppConf:
    """Options of the sampling app `sde-gen-sample` (the top level of `conf/sample.yaml` without
    its `sde` and `sampler` groups). Ranges are checked in `__post_init__`, so `validate` fails at
    start-up naming the field.

    Attributes:
        source: "oracle" (an exact-score problem) or "checkpoint" (a trained network's EMA weights).
        problem: oracle preset name (a key of `sde_gen.oracles.PRESETS`); used when source=oracle.
        checkpoint: path of a training checkpoint; required when source=checkpoint.
        ema: use the EMA weights of the checkpoint.
        num_samples: samples to draw (>= 1).
        batch_size: samples per sampler call; 0 draws all in one call.
        seed: seed of the generator for the prior and the sampler's noise.
        metrics_seed: seed for the fresh exact data and the projections of the metrics.
        device: "auto" or a torch device string.
        dtype: "float32" or "float64" for the samples and the score.
        noise_floor_replicates: independent exact-vs-exact replicates for the noise floor (>= 2).
        num_projections: random directions of the sliced Wasserstein distance.
        plot: write the picture (images of a class-conditional run: one row per class).
        check_finite: track samples that become non-finite during sampling (the sampler's
            `check_finite`, no host sync in the loop) and record their number as `num_nonfinite`.
        trusted_targets: `_target_` strings of your own (e.g. a backbone "mypkg.nets.MyNet") that
            the checkpoint's stored config may build; trust is never read from the checkpoint.
        label: the classes to sample. null: with guidance, every class of the source with an equal
            share (num_samples // C each, the remainder one more each to the lowest classes);
            without guidance, unconditional sampling. An int: every sample from that class. A
            list of distinct ints: an equal share each, the remainder one more each to the
            classes listed first. Samples are stored class by class, in the order given.
        guidance: `GuidanceConf` (kind none | cfg | classifier, scale).
        classifier: a classifier run (its folder or a checkpoint file) for guidance.kind=classifier;
            required with source=checkpoint, optional with source=oracle (the exact classifier is
            used when null).
        task: "sample" (default), or an inverse problem solved with the unconditional score and
            measured against the exact posterior where the data have one (oracle problems, and
            checkpoints trained on them): "inpaint" (mask preset), "colorize" (gray image known;
            data with 3 colour channels) or "linear" (random projection).
        inverse: `InverseConf` (method, mask, missing, noise_std, num_observations, observation_seed).
        feature_classifier: a classifier run (folder or ckpt file, e.g. `sde-gen-train
            experiment=classifier_digits`) whose penultimate features score image checkpoints:
            metrics.json gets classifier_fd (Frechet distance to the test set), its value between
            two halves of the test set, and classifier_kid; source=checkpoint only.
        progress: a tqdm bar over the sampler's steps (per step, through the sampler's callback);
            shown only when stderr is a terminal.
        precision: "fp32" (default), "bf16" or "fp16" (CUDA only): `torch.autocast` around the score
            function alone (`sde_gen.precision.precision_score`); the time grid stays float64 and the
            sampler's state stays in `dtype`.
        compile: evaluate the score network through `torch.compile` (eager fallback, reported once).
        compile_backend: the `torch.compile` backend ("inductor"; "aot_eager" captures the graph
            without generating code).
        inception: `InceptionConf`: FID / KID against the test split for image checkpoints when
            `inception.weights` names the Inception weights file.

    The checks that need the source (a label in [0, C), a class-conditional checkpoint for
    cfg or a label without guidance, a classifier with the data's C classes and the sampling
    SDE) run in `sde_gen.apps.sample.run` after loading it, before any sampling.
    """

    source: str = "oracle"
    problem: str = "ring2d"
    checkpoint: Optional[str] = None
    ema: bool = True
    num_samples: int = 2000
    batch_size: int = 0
    seed: int = 0
    metrics_seed: int = 12345
    device: str = "auto"
    dtype: str = "float32"
    noise_floor_replicates: int = 10
    num_projections: int = 500
    plot: bool = True
    check_finite: bool = True
    trusted_targets: List[str] = dataclasses.field(default_factory=list)
    label: Any = None
    guidance: GuidanceConf = dataclasses.field(default_factory=GuidanceConf)
    classifier: Optional[str] = None
    task: str = "sample"
    inverse: InverseConf = dataclasses.field(default_factory=InverseConf)
    feature_classifier: Optional[str] = None
    progress: bool = True
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    inception: InceptionConf = dataclasses.field(default_factory=InceptionConf)

    def __post_init__(self):
        _check_source(self)
        check_choice("precision", self.precision, PRECISIONS)
        if not self.compile_backend:
            raise ValueError("compile_backend must name a torch.compile backend such as 'inductor'; got an empty string")
        _check_label(self.label)
        check_choice("task", self.task, TASKS)
        if self.task != "sample":
            if self.label is not None or self.guidance.kind != "none":
                raise ValueError(f"task={self.task} samples p(x | y) for an observation y: label and guidance must stay "
                                 f"unset (label=null, guidance.kind=none); got label={self.label!r}, "
                                 f"guidance.kind={self.guidance.kind}")
        if self.feature_classifier is not None and self.task != "sample":
            raise ValueError(f"feature_classifier scores unconditional samples (task=sample); got task={self.task}")
        if self.inception.weights is not None and self.task != "sample":
            raise ValueError(f"inception.weights (FID/KID) scores unconditional samples (task=sample); got task={self.task}")
        kind = self.guidance.kind
        if self.classifier is not None and kind != "classifier":
            raise ValueError(f"classifier is used only with guidance.kind=classifier; got classifier={self.classifier!r} "
                             f"with guidance.kind={kind}")
        if kind == "classifier" and self.source == "checkpoint" and not self.classifier:
            raise ValueError("classifier must name a classifier run (its folder or a ckpt_*.pt file) for "
                             f"guidance.kind=classifier with source=checkpoint; got {self.classifier!r} "
                             "(with source=oracle the exact classifier is used)")
        check_positive_int("num_samples", self.num_samples)
        check_nonnegative("batch_size", self.batch_size)
        check_choice("dtype", self.dtype, DTYPES)
        if self.noise_floor_replicates < 2:
            raise ValueError(f"noise_floor_replicates must be an integer >= 2 (a std needs two); got {self.noise_floor_replicates!r}")
        check_positive_int("num_projections", self.num_projections)
