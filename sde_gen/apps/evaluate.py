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

`likelihood.kind=elbo` replaces the ODE by the discrete reverse chain's bound (`sde_gen.elbo`, Ho et al.
2020, eq. 5) with `likelihood.num_steps`, `likelihood.variance` (beta | posterior | analytic |
analytic_extended, Bao et al. 2022a, b) and `likelihood.grid`; the analytic variances estimate Gamma_t or the
residual R_t once from `likelihood.gamma_samples` training points (oracle: fresh draws) and cache it in
`likelihood.gamma_cache` (null: the run folder). Images get the discretised Gaussian decoder with the bins of
the dequantisation above, so their bits/dim are in the same units. The reported log-likelihood is then a
lower bound (its bits/dim an upper bound).

With `inception.weights=<path of pt_inception-2015-12-05-6726825d.pth>` an image checkpoint also
gets FID / KID (`sde_gen.inception.fid_kid`) of `inception.num_samples` samples drawn with
`inception.sampler` at `inception.nfe` against the test split, under the key `inception` (the
reference statistics are cached per data set; the weights are read before any work).

Results go to `likelihood.json` (written atomically) in Hydra's run directory. Under `torchrun
--nproc_per_node=N -m sde_gen.evaluate` each process evaluates a contiguous share of the test
batches (batch k draws its probes and dequantisation noise from its own stream,
`sde_gen.distributed.batch_generator`) and rank 0 gathers and writes: the values equal one
process's with the same `batch_size` and `seed` (docs/gpu.md). The chain ELBO and the discrete
ELBO are computed by rank 0 alone.
Run: `sde-gen-eval source=oracle problem=ring2d sde=ve` or `python -m sde_gen.evaluate ...`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import DictConfig

from ..analytic import estimate_gamma, estimate_residual, module_fingerprint
from ..checkpoint import checkpoint_kind, load_discrete, load_trained
from ..config import instantiate, resolve_device, to_plain, validate
from ..config_apps import EvalConf
from ..inception import fid_kid, load_inception
from ..io import atomic_write_text
from ..distributed import (DistInfo, batch_generator, finish_distributed, gather_to_main, init_distributed,
                           process_device, shard_range)
from ..likelihood import DatasetLikelihood, elbo, evaluate_dataset
from ..samplers.grids import time_grid
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
                               dtype=dtype, progress=progress_enabled(conf.progress) and info.is_main, **kwargs)
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


def _needs_table(conf: EvalConf) -> bool:
    """The ELBO with an analytic variance: Gamma_t or the residual from training points."""
    return conf.likelihood.kind == "elbo" and conf.likelihood.variance in ("analytic", "analytic_extended")


class _ELBOSource:
    """What the ELBO needs besides the test points: training data for Gamma / the residual, a cache key
    for the model, the cache folder."""

    def __init__(self, gamma_data: torch.Tensor, model_key: str, cache_dir: str):
        self.gamma_data, self.model_key, self.cache_dir = gamma_data, model_key, cache_dir


def _elbo_dataset(sde, score_fn, data, conf: EvalConf, generator, source: _ELBOSource, dataset_or_map=None):
    """Per-sample ELBO (nats) over `data` in batches, with the table its variance needs; (values, info)."""
    import time

    opts = conf.likelihood
    t0 = time.perf_counter()
    grid = time_grid(sde, opts.num_steps, kind=opts.grid, t_min=opts.t_min, device=data.device)
    tables = {"gamma": None, "residual": None}
    nfe = 0
    if opts.variance in ("analytic", "analytic_extended"):
        estimate = estimate_gamma if opts.variance == "analytic" else estimate_residual
        name = "gamma" if opts.variance == "analytic" else "residual"
        # its own seeded stream, so the ELBO's draws below are the same whether the cache hits or not
        table_gen = torch.Generator(device=data.device).manual_seed(conf.seed + 1)
        tables[name] = estimate(score_fn, sde, source.gamma_data, grid, batch_size=conf.batch_size, generator=table_gen,
                                cache_dir=source.cache_dir, cache_key=source.model_key)
        nfe += source.gamma_data.shape[0] * grid.numel()
    values, terms = [], {"prior_term": [], "diffusion_term": [], "decoder_term": []}
    for chunk in torch.split(data, conf.batch_size):
        res = elbo(sde, score_fn, chunk, opts.num_steps, variance=opts.variance, grid=opts.grid, t_min=opts.t_min,
                   generator=generator, dataset_or_map=dataset_or_map, **tables)
        values.append(res.elbo.cpu())
        for key in terms:
            terms[key].append(getattr(res, key).cpu())
        nfe += chunk.shape[0] * (opts.num_steps + 1)
    info = {"likelihood_kind": "elbo", "num_steps": opts.num_steps, "variance": opts.variance, "grid": opts.grid,
            "elbo_terms_nats": {k: _mean_se(torch.cat(v)) for k, v in terms.items()},
            "nfe": nfe, "seconds": time.perf_counter() - t0}
    return torch.cat(values), info


def _continuous_report(sde, score_fn, x, conf: EvalConf, generator, device, dtype, info: DistInfo, oracle=None,
                       elbo_source: Optional[_ELBOSource] = None) -> Optional[Dict[str, Any]]:
    """Model log-likelihood of continuous test points, and the exact one when an oracle is known
    (None on ranks other than 0)."""
    opts = conf.likelihood
    if opts.kind == "elbo":
        if not info.is_main:  # the chain ELBO runs on rank 0 alone
            return None
        logp, details = _elbo_dataset(sde, score_fn, x.to(device=device, dtype=dtype), conf, generator, elbo_source)
        return _logp_report(logp, details, x, oracle)
    kwargs = _ode_kwargs(opts)
    if opts.prior == "exact":
        if oracle is None:
            raise ValueError("likelihood.prior=exact needs an oracle data set (exact p_T); use prior=standard")
        p_T = oracle.to(device).perturbed(sde, sde.T)
        kwargs["prior_logp"] = p_T.log_prob
    res = _evaluate_split(sde, score_fn, x, conf, generator, device, dtype, info, **kwargs)
    if res is None:
        return None
    details = {
        "likelihood_kind": "ode",
        # mean per-sample Hutchinson standard error (null with one probe: no spread to measure)
        "hutchinson_std_error_mean": float(res.estimator_std_error.mean()) if opts.divergence == "hutchinson" else 0.0,
        "nfe": res.nfe,
        "seconds": res.seconds,
    }
    return _logp_report(res.values, details, x, oracle)


def _logp_report(logp: torch.Tensor, info: Dict[str, Any], x, oracle) -> Dict[str, Any]:
    """The per-sample model log-likelihood (or its ELBO) of continuous points, next to the exact one."""
    D = math.prod(x.shape[1:])
    out: Dict[str, Any] = {
        "unit": "nats",
        "dim": D,
        "num_test": int(x.shape[0]),
        "model_logp_nats": _mean_se(logp),
        "model_nll_nats_per_dim": _mean_se(-logp / D),
        "model_nll_bits_per_dim": _mean_se(-logp / (D * math.log(2))),
        **info,
    }
    if oracle is not None:
        exact = oracle.log_prob(x.to(torch.float64)).to(logp.dtype).cpu()
        out["exact_logp_nats"] = _mean_se(exact)
        out["exact_nll_nats_per_dim"] = _mean_se(-exact / D)
        # paired difference: the same points under both densities
        out["model_minus_exact_nats"] = _mean_se(logp - exact)
        out["model_minus_exact_nats_per_dim"] = _mean_se((logp - exact) / D)
    return out


def _image_report(sde, score_fn, dataset, conf: EvalConf, generator, device, dtype, info: DistInfo,
                  elbo_source: Optional[_ELBOSource] = None) -> Optional[Dict[str, Any]]:
    pixels = dataset.test_pixels
    if conf.num_test is not None:
        pixels = pixels[: conf.num_test]
    if conf.likelihood.kind == "elbo":
        if not info.is_main:  # the chain ELBO runs on rank 0 alone
            return None
        logp, details = _elbo_dataset(sde, score_fn, pixels.to(device=device, dtype=dtype), conf, generator,
                                      elbo_source, dataset_or_map=dataset)
        bpd = -logp / (math.prod(pixels.shape[1:]) * math.log(2))
        return {"unit": "bits/dim", "dim": math.prod(pixels.shape[1:]), "num_test": int(pixels.shape[0]),
                "num_bits": getattr(dataset, "num_bits", None), "num_levels": getattr(dataset, "num_levels", None),
                "bits_per_dim": _mean_se(bpd), **details}
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


def _checkpoint_report(conf: EvalConf, generator, device, dtype, info: DistInfo,
                       cache_dir: str) -> Optional[Dict[str, Any]]:
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
    images = getattr(dataset, "test_pixels", None) is not None
    inception = None
    if conf.inception.weights is not None:  # read before any work: a missing file fails at once
        if not images:
            raise ValueError("inception.weights (FID/KID) needs a checkpoint trained on images; the data of "
                             f"{conf.checkpoint!r} are {tuple(getattr(dataset, 'event_shape', ()))}-vectors")
        inception = load_inception(conf.inception.weights, device=device, resize=conf.inception.resize)
    source = None
    if _needs_table(conf):  # Gamma from training data; the cache keyed by the weights
        data = dataset.sample_batch(conf.likelihood.gamma_samples, generator).to(device=device, dtype=dtype)
        source = _ELBOSource(data, f"{module_fingerprint(model)}:{model_dtype}", cache_dir)
    if images:
        part = _image_report(sde, score_fn, dataset, conf, generator, device, dtype, info, source)
        if part is not None and inception is not None:  # FID / KID on rank 0 only
            part["inception"] = _inception_report(sde, score_fn, dataset, inception, conf, device)
    else:
        x = dataset.test if conf.num_test is None else dataset.test[: conf.num_test]
        oracle = getattr(dataset, "oracle", None)
        part = _continuous_report(sde, score_fn, x, conf, generator, device, dtype, info, oracle, source)
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
    cache_dir = conf.likelihood.gamma_cache or out_dir
    if conf.source == "oracle":
        if conf.inception.weights is not None:
            raise ValueError("inception.weights (FID/KID) needs source=checkpoint with image data; got source=oracle")
        sde = instantiate(cfg.sde, "sde").to(device)
        oracle = make_preset(conf.problem).to(device)
        x = oracle.sample(conf.num_test or 1000, generator, device=device, dtype=dtype)
        source = None
        if _needs_table(conf):  # Gamma from fresh draws of the oracle
            data = oracle.sample(conf.likelihood.gamma_samples, generator, device=device, dtype=dtype)
            source = _ELBOSource(data, f"oracle:{conf.problem}", cache_dir)
        part = _continuous_report(sde, oracle.score_fn(sde), x, conf, generator, device, dtype, info, oracle, source)
        report = None if part is None else {"problem": conf.problem, **part}
    else:
        report = _checkpoint_report(conf, generator, device, dtype, info, cache_dir)
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

    bound = "-ELBO " if report.get("likelihood_kind") == "elbo" else ""
    if report["unit"] == "bits/dim":
        b = report["bits_per_dim"]
        line = f"test {bound}bits/dim = {fmt(b['mean'], '.4f')} +- {fmt(b['std_error'], '.4f')} (NFE {report['nfe']})"
        if "inception" in report:
            i = report["inception"]
            line += (f"; FID {fmt(i['fid'], '.3f')}, KID {fmt(i['kid'], '.5f')} ({i['fid_num_samples']} samples, "
                     f"{i['sampler']} NFE {i['nfe']})")
        return line
    m = report["model_nll_nats_per_dim"]
    line = f"model {bound or 'NLL '}= {fmt(m['mean'], '.5f')} +- {fmt(m['std_error'], '.5f')} nats/dim"
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
