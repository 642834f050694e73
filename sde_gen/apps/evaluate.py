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
  has an oracle. A discrete-diffusion checkpoint (`sde_gen.discrete`, e.g. `experiment=d3pm_digits_absorbing`)
  gets its test negative ELBO in bits/dim (D3PM eq. 5, all T terms; `nfe` = T model calls per batch), its
  three terms, and the uniform-code and independent-categorical baselines (and the exact NLL for data with
  an exact likelihood, `data=markov_tokens`).

Results go to `likelihood.json` (written atomically) in Hydra's run directory. Under `torchrun
--nproc_per_node=N -m sde_gen.evaluate` each process evaluates a contiguous share of the test
batches (batch k draws its probes and dequantisation noise from its own stream,
`sde_gen.distributed.batch_generator`) and rank 0 gathers and writes: the values equal one
process's with the same `batch_size` and `seed` (docs/gpu.md).
Run: `sde-gen-eval source=oracle problem=ring2d sde=ve` or `python -m sde_gen.evaluate ...`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..checkpoint import checkpoint_kind, load_discrete, load_trained
from ..config import instantiate, resolve_device, to_plain, validate
from ..config_apps import EvalConf
from ..io import atomic_write_text
from ..distributed import (DistInfo, batch_generator, finish_distributed, gather_to_main, init_distributed,
                           process_device, shard_range)
from ..likelihood import DatasetLikelihood, evaluate_dataset
from ..oracles import make_preset
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


def _evaluate_split(sde, score_fn, data, conf: EvalConf, generator, device, dtype, info: DistInfo, **kwargs):
    """`evaluate_dataset` over `data` in batches of `conf.batch_size`, this process's share of them,
    gathered on rank 0 (None on the other ranks).

    Batch k draws its probes and dequantisation noise from `batch_generator(seed, k)` (batch 0 from
    `generator`, which may have drawn the test points first), and the batches are dealt in
    contiguous shares (`shard_range`): every process count gives the values one process gives.
    `seconds` is the slowest process's time.
    """
    B = conf.batch_size
    num_batches = -(-data.shape[0] // B)
    parts = []
    for k in shard_range(num_batches, info.rank, info.world_size):
        res = evaluate_dataset(sde, score_fn, data[k * B:(k + 1) * B], batch_size=B,
                               generator=batch_generator(conf.seed, k, device, first=generator), device=device,
                               dtype=dtype, progress=conf.progress and info.is_main, **kwargs)
        parts.append(res)
    mine = {"values": [r.values for r in parts], "errs": [r.estimator_std_error for r in parts],
            "nfe": sum(r.nfe for r in parts), "seconds": sum(r.seconds for r in parts)}
    gathered = gather_to_main(mine, info)
    if gathered is None:
        return None
    values = torch.cat([v for g in gathered for v in g["values"]])
    errs = torch.cat([e for g in gathered for e in g["errs"]])
    N = values.shape[0]
    return DatasetLikelihood(
        unit="bits/dim" if kwargs.get("dataset_or_map") is not None else "nats", values=values,
        estimator_std_error=errs, mean=float(values.mean()),
        std_error=float(values.std(unbiased=True)) / math.sqrt(N) if N > 1 else float("nan"),
        dim=math.prod(data.shape[1:]), nfe=sum(g["nfe"] for g in gathered),
        seconds=max(g["seconds"] for g in gathered))


def _continuous_report(sde, score_fn, x, conf: EvalConf, generator, device, dtype, info: DistInfo,
                       oracle=None) -> Optional[Dict[str, Any]]:
    """Model log-likelihood of continuous test points, and the exact one when an oracle is known."""
    opts = conf.likelihood
    kwargs = _ode_kwargs(opts)
    if opts.prior == "exact":
        if oracle is None:
            raise ValueError("likelihood.prior=exact needs an oracle data set (exact p_T); use prior=standard")
        p_T = oracle.to(device).perturbed(sde, sde.T)
        kwargs["prior_logp"] = p_T.log_prob
    res = _evaluate_split(sde, score_fn, x, conf, generator, device, dtype, info, **kwargs)
    if res is None:
        return None
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


def _image_report(sde, score_fn, dataset, conf: EvalConf, generator, device, dtype,
                  info: DistInfo) -> Optional[Dict[str, Any]]:
    pixels = dataset.test_pixels
    if conf.num_test is not None:
        pixels = pixels[: conf.num_test]
    res = _evaluate_split(sde, score_fn, pixels, conf, generator, device, dtype, info, dataset_or_map=dataset,
                          num_dequant=conf.num_dequant, **_ode_kwargs(conf.likelihood))
    if res is None:
        return None
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


def _discrete_report(conf: EvalConf, generator, device) -> Dict[str, Any]:
    """The negative ELBO (D3PM eq. 5, all T terms) of the test tokens of a discrete-diffusion checkpoint, in
    bits/dim, next to the uniform code log2 K, a fitted independent-categorical model and, for data with an
    exact likelihood, the exact NLL of the same points."""
    from ..discrete.evaluation import elbo_report

    trained = load_discrete(conf.checkpoint, device=device, ema=conf.ema)
    process, model, data = trained.sde, trained.model, trained.dataset
    x0 = data.test if conf.num_test is None else data.test[: conf.num_test]
    rep = elbo_report(process, model, x0.to(device), generator, conf.batch_size, data=data)
    report = {
        "checkpoint": os.path.abspath(conf.checkpoint), "step": trained.step, "unit": "bits/dim",
        "process": type(process).__name__, "num_timesteps": process.T, "num_levels": data.num_levels,
        "dim": int(x0[0].numel()), "num_test": rep["num_test"],
        "bits_per_dim": {"mean": rep["bits_per_dim"], "std_error": rep["bits_per_dim_se"]},
        "terms_bits_per_dim": {k: rep[f"{k}_bpd"] for k in ("prior", "diffusion", "reconstruction")},
        "uniform_code_bits_per_dim": math.log2(data.num_levels),
        "independent_categorical_bits_per_dim": data.independent_bits_per_dim(x0.cpu()),
        "nfe": rep["elbo_nfe"],
    }
    if "exact_bits_per_dim" in rep:
        report["exact_bits_per_dim"] = rep["exact_bits_per_dim"]
    return report


def _checkpoint_report(conf: EvalConf, generator, device, dtype, info: DistInfo) -> Optional[Dict[str, Any]]:
    if checkpoint_kind(conf.checkpoint, conf.trusted_targets) == "discrete":
        # one pass over the test set (T model calls per batch); under torchrun rank 0 reports it
        report = _discrete_report(conf, generator, device)
        return report if info.is_main else None
    trained = load_trained(conf.checkpoint, device=device, ema=conf.ema, trusted_targets=conf.trusted_targets)
    model, sde, dataset = trained.model, trained.sde.to(device), trained.dataset
    model.eval()
    param = next(model.parameters(), None)
    model_dtype = param.dtype if param is not None else dtype

    def score_fn(x, t):
        return model(x.to(model_dtype), t.to(model_dtype)).to(x.dtype)

    if getattr(dataset, "test", None) is None:  # only the stored DataStats: the data files are gone
        raise ValueError(f"the test-set likelihood of checkpoint {trained.path!r} needs its test data, but the data set "
                         f"{dataset.name!r} cannot be rebuilt from its files (see the warning above); put them back where "
                         "the checkpoint's config.data points")
    report = {"checkpoint": os.path.abspath(conf.checkpoint), "step": int(getattr(trained, "step", -1))}
    if getattr(dataset, "test_pixels", None) is not None:
        part = _image_report(sde, score_fn, dataset, conf, generator, device, dtype, info)
    else:
        x = dataset.test if conf.num_test is None else dataset.test[: conf.num_test]
        oracle = getattr(dataset, "oracle", None)
        part = _continuous_report(sde, score_fn, x, conf, generator, device, dtype, info, oracle)
    return None if part is None else {**report, **part}


def run_eval(cfg: DictConfig, out_dir: str) -> Dict[str, Any]:
    """Validate `cfg` (failing before any work with the field's name), evaluate, write the JSON.

    Under `torchrun --nproc_per_node=N` each process evaluates its share of the test batches and
    rank 0 gathers them and writes the report (the other ranks return an empty dict)."""
    conf: EvalConf = validate(cfg, EvalConf, "eval")
    device = resolve_device(conf.device)
    info = init_distributed(device)
    try:
        return _run_eval(cfg, conf, process_device(device, info), info, out_dir)
    finally:
        finish_distributed(info)


def _run_eval(cfg: DictConfig, conf: EvalConf, device, info: DistInfo, out_dir: str) -> Dict[str, Any]:
    dtype = _DTYPES[conf.dtype]
    generator = torch.Generator(device=device).manual_seed(conf.seed)
    if conf.source == "oracle":
        sde = instantiate(cfg.sde, "sde").to(device)
        oracle = make_preset(conf.problem).to(device)
        x = oracle.sample(conf.num_test or 1000, generator, device=device, dtype=dtype)
        part = _continuous_report(sde, oracle.score_fn(sde), x, conf, generator, device, dtype, info, oracle)
        report = None if part is None else {"problem": conf.problem, **part}
    else:
        report = _checkpoint_report(conf, generator, device, dtype, info)
    if report is None:  # a rank other than 0: rank 0 writes the report
        return {}
    report = {"source": conf.source, "device": str(device), "dtype": conf.dtype, "num_processes": info.world_size,
              **report, "config": to_plain(cfg)}
    report = _finite_or_none(report)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write_text(os.path.join(out_dir, "likelihood.json"), text)
    return report


def _summary(report: Dict[str, Any]) -> str:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    if report["unit"] == "bits/dim":
        b = report["bits_per_dim"]
        return f"test bits/dim = {fmt(b['mean'], '.4f')} +- {fmt(b['std_error'], '.4f')} (NFE {report['nfe']})"
    m = report["model_nll_nats_per_dim"]
    line = f"model NLL = {fmt(m['mean'], '.5f')} +- {fmt(m['std_error'], '.5f')} nats/dim"
    if "exact_nll_nats_per_dim" in report:
        e, d = report["exact_nll_nats_per_dim"], report["model_minus_exact_nats_per_dim"]
        line += (f"; exact {fmt(e['mean'], '.5f')}; model - exact logp = {fmt(d['mean'], '.2e')} "
                 f"+- {fmt(d['std_error'], '.1e')} nats/dim")
    return line + f" (NFE {report['nfe']})"


def _task(cfg: DictConfig, out_dir: str, choices: Dict[str, str]) -> None:
    report = run_eval(cfg, out_dir)
    if not report:  # a rank other than 0 under torchrun
        return
    print(_summary(report))
    if "independent_categorical_bits_per_dim" in report:
        line = (f"baselines: uniform code {report['uniform_code_bits_per_dim']:.4f}, independent categorical "
                f"{report['independent_categorical_bits_per_dim']:.4f} bits/dim")
        if "exact_bits_per_dim" in report:
            line += f"; exact NLL of the same points {report['exact_bits_per_dim']:.4f} bits/dim"
        print(line)
    print(f"wrote {os.path.join(out_dir, 'likelihood.json')}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-eval`; `argv` (overrides) for in-process use."""
    hydra_app("eval", _task, argv)


if __name__ == "__main__":
    main()
