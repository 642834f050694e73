"""`sde-gen-eval`: test-set likelihood through the probability-flow ODE (Song et al. 2021, eq. 39).

Two sources of the score:

* `source=oracle problem=<preset> sde=<vp|subvp|ve>`: the exact score of an oracle mixture
  (`sde_gen.oracles`), no checkpoint; test data are fresh draws from the oracle. The model's
  log-likelihood (nats per sample and nats/dim) is reported next to the exact data
  log-likelihood `oracle.log_prob(x)`, with their paired difference. `likelihood.prior=exact` uses
  the oracle's exact p_T instead of the SDE's prior, which removes the prior mismatch.
* `source=checkpoint checkpoint=<path>`: a trained model (`sde_gen.checkpoint.load_trained`);
  image data sets get bits/dim with uniform dequantisation (`sde_gen.likelihood.bits_per_dim`),
  continuous ones nats/dim and total nats, plus the exact data log-likelihood when the data set
  has an oracle.

With `inception.weights=<path of pt_inception-2015-12-05-6726825d.pth>` an image checkpoint also
gets FID / KID (`sde_gen.inception.fid_kid`) of `inception.num_samples` samples drawn with
`inception.sampler` at `inception.nfe` against the test split, under the key `inception` (the
reference statistics are cached per data set; the weights are read before any work).

Results go to `likelihood.json` (written atomically) in Hydra's run directory.
Run: `sde-gen-eval source=oracle problem=ring2d sde=ve` or `python -m sde_gen.evaluate ...`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..checkpoint import load_trained
from ..config import instantiate, resolve_device, to_plain, validate
from ..config_apps import EvalConf
from ..inception import fid_kid, load_inception
from ..io import atomic_write_text
from ..likelihood import evaluate_dataset
from ..oracles import make_preset
from ..progress import progress_enabled
from ._hydra import hydra_app

__all__ = ["main", "run_eval"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _finite_or_none(obj):
    """JSON has no NaN: undefined numbers (e.g. a standard error from one sample) become null."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _mean_se(values: torch.Tensor) -> Dict[str, float]:
    n = values.shape[0]
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "std_error": se}


def _ode_kwargs(opts) -> Dict[str, Any]:
    return dict(
        method=opts.method, rtol=opts.rtol, atol=opts.atol, divergence=opts.divergence,
        num_probes=opts.num_probes, probe=opts.probe, t_min=opts.t_min, fixed_steps=opts.fixed_steps,
        time_variable=opts.time_variable,
    )


def _continuous_report(sde, score_fn, x, conf: EvalConf, generator, device, dtype, oracle=None) -> Dict[str, Any]:
    """Model log-likelihood of continuous test points, and the exact one when an oracle is known."""
    opts = conf.likelihood
    kwargs = _ode_kwargs(opts)
    if opts.prior == "exact":
        if oracle is None:
            raise ValueError("likelihood.prior=exact needs an oracle data set (exact p_T); use prior=standard")
        p_T = oracle.to(device).perturbed(sde, sde.T)
        kwargs["prior_logp"] = p_T.log_prob
    res = evaluate_dataset(
        sde, score_fn, x, batch_size=conf.batch_size, generator=generator, device=device, dtype=dtype,
        progress=progress_enabled(conf.progress), **kwargs,
    )
    D = res.dim
    logp = res.values
    out: Dict[str, Any] = {
        "unit": "nats",
        "dim": D,
        "num_test": int(x.shape[0]),
        "model_logp_nats": _mean_se(logp),
        "model_nll_nats_per_dim": _mean_se(-logp / D),
        "model_nll_bits_per_dim": _mean_se(-logp / (D * math.log(2))),
        # mean per-sample Hutchinson standard error (null with one probe: no spread to measure)
        "hutchinson_std_error_mean": float(res.estimator_std_error.mean()) if opts.divergence == "hutchinson" else 0.0,
        "nfe": res.nfe,
        "seconds": res.seconds,
    }
    if oracle is not None:
        exact = oracle.log_prob(x.to(torch.float64)).to(logp.dtype).cpu()
        out["exact_logp_nats"] = _mean_se(exact)
        out["exact_nll_nats_per_dim"] = _mean_se(-exact / D)
        # paired difference: the same points under both densities
        out["model_minus_exact_nats"] = _mean_se(logp - exact)
        out["model_minus_exact_nats_per_dim"] = _mean_se((logp - exact) / D)
    return out


def _image_report(sde, score_fn, dataset, conf: EvalConf, generator, device, dtype) -> Dict[str, Any]:
    pixels = dataset.test_pixels
    if conf.num_test is not None:
        pixels = pixels[: conf.num_test]
    res = evaluate_dataset(
        sde, score_fn, pixels, dataset_or_map=dataset, batch_size=conf.batch_size,
        num_dequant=conf.num_dequant, generator=generator, device=device, dtype=dtype,
        progress=progress_enabled(conf.progress), **_ode_kwargs(conf.likelihood),
    )
    return {
        "unit": "bits/dim",
        "dim": res.dim,
        "num_test": int(pixels.shape[0]),
        "num_bits": getattr(dataset, "num_bits", None),
        "num_levels": getattr(dataset, "num_levels", None),
        "num_dequant": conf.num_dequant,
        "bits_per_dim": {"mean": res.mean, "std_error": res.std_error},
        "dequant_std_error_mean": float(res.estimator_std_error.mean()) if conf.num_dequant > 1 else None,
        "nfe": res.nfe,
        "seconds": res.seconds,
    }


def _inception_report(sde, score_fn, dataset, net, conf: EvalConf, device) -> Dict[str, Any]:
    """Draw `inception.num_samples` samples and score them with FID / KID against the test split."""
    from ..samplers import build_sampler

    opts = conf.inception
    sampler = build_sampler(opts.sampler, nfe=opts.nfe)
    gen = torch.Generator(device=device).manual_seed(conf.seed + 1)
    drawn = []
    for start in range(0, opts.num_samples, conf.batch_size):
        b = min(conf.batch_size, opts.num_samples - start)
        drawn.append(sampler(sde, score_fn, shape=(b, *dataset.event_shape), generator=gen, device=device,
                             dtype=torch.float32).samples)
    samples = torch.cat(drawn)
    samples = samples[torch.isfinite(samples.flatten(1)).all(1)]
    reference = dataset.test if opts.reference_size is None else dataset.test[: opts.reference_size]
    out = fid_kid(net, samples, reference, name=str(getattr(dataset, "name", "reference")), cache_dir=opts.cache_dir,
                  batch_size=opts.batch_size, generator=torch.Generator().manual_seed(conf.seed))
    out.update(sampler=opts.sampler, nfe=opts.nfe, num_drawn=opts.num_samples)
    return out


def _checkpoint_report(conf: EvalConf, generator, device, dtype) -> Dict[str, Any]:
    trained = load_trained(conf.checkpoint, device=device, ema=conf.ema, trusted_targets=conf.trusted_targets)
    model, sde, dataset = trained.model, trained.sde.to(device), trained.dataset
    model.eval()
    param = next(model.parameters(), None)
    model_dtype = param.dtype if param is not None else dtype

    def score_fn(x, t):
        return model(x.to(model_dtype), t.to(model_dtype)).to(x.dtype)

    report = {"checkpoint": os.path.abspath(conf.checkpoint), "step": int(getattr(trained, "step", -1))}
    images = getattr(dataset, "test_pixels", None) is not None
    inception = None
    if conf.inception.weights is not None:  # read before any work: a missing file fails at once
        if not images:
            raise ValueError("inception.weights (FID/KID) needs a checkpoint trained on images; the data of "
                             f"{conf.checkpoint!r} are {tuple(getattr(dataset, 'event_shape', ()))}-vectors")
        inception = load_inception(conf.inception.weights, device=device, resize=conf.inception.resize)
    if images:
        report.update(_image_report(sde, score_fn, dataset, conf, generator, device, dtype))
        if inception is not None:
            report["inception"] = _inception_report(sde, score_fn, dataset, inception, conf, device)
    else:
        x = dataset.test if conf.num_test is None else dataset.test[: conf.num_test]
        oracle = getattr(dataset, "oracle", None)
        report.update(_continuous_report(sde, score_fn, x, conf, generator, device, dtype, oracle))
    return report


def run_eval(cfg: DictConfig, out_dir: str) -> Dict[str, Any]:
    """Validate `cfg` (failing before any work with the field's name), evaluate, write the JSON."""
    conf: EvalConf = validate(cfg, EvalConf, "eval")
    device = resolve_device(conf.device)
    dtype = _DTYPES[conf.dtype]
    generator = torch.Generator(device=device).manual_seed(conf.seed)
    if conf.source == "oracle":
        if conf.inception.weights is not None:
            raise ValueError("inception.weights (FID/KID) needs source=checkpoint with image data; got source=oracle")
        sde = instantiate(cfg.sde, "sde").to(device)
        oracle = make_preset(conf.problem).to(device)
        x = oracle.sample(conf.num_test or 1000, generator, device=device, dtype=dtype)
        report = {"problem": conf.problem}
        report.update(_continuous_report(sde, oracle.score_fn(sde), x, conf, generator, device, dtype, oracle))
    else:
        report = _checkpoint_report(conf, generator, device, dtype)
    report = {"source": conf.source, "device": str(device), "dtype": conf.dtype, **report, "config": to_plain(cfg)}
    report = _finite_or_none(report)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write_text(os.path.join(out_dir, "likelihood.json"), text)
    return report


def _summary(report: Dict[str, Any]) -> str:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    if report["unit"] == "bits/dim":
        b = report["bits_per_dim"]
        line = f"test bits/dim = {fmt(b['mean'], '.4f')} +- {fmt(b['std_error'], '.4f')} (NFE {report['nfe']})"
        if "inception" in report:
            i = report["inception"]
            line += (f"; FID {fmt(i['fid'], '.3f')}, KID {fmt(i['kid'], '.5f')} ({i['fid_num_samples']} samples, "
                     f"{i['sampler']} NFE {i['nfe']})")
        return line
    m = report["model_nll_nats_per_dim"]
    line = f"model NLL = {fmt(m['mean'], '.5f')} +- {fmt(m['std_error'], '.5f')} nats/dim"
    if "exact_nll_nats_per_dim" in report:
        e, d = report["exact_nll_nats_per_dim"], report["model_minus_exact_nats_per_dim"]
        line += (f"; exact {fmt(e['mean'], '.5f')}; model - exact logp = {fmt(d['mean'], '.2e')} "
                 f"+- {fmt(d['std_error'], '.1e')} nats/dim")
    return line + f" (NFE {report['nfe']})"


def _task(cfg: DictConfig, out_dir: str, choices: Dict[str, str]) -> None:
    report = run_eval(cfg, out_dir)
    print(_summary(report))
    print(f"wrote {os.path.join(out_dir, 'likelihood.json')}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-eval`; `argv` (overrides) for in-process use."""
    hydra_app("eval", _task, argv)


if __name__ == "__main__":
    main()
