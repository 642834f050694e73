"""The report command `sde-gen-report DIR`: aggregate the runs under a (multi)run directory.

Sampling runs (`sde-gen-sample`, one `metrics.json` each) and training runs (`sde-gen-train`, a
`metrics.csv` whose last row is the final evaluation, next to `config_resolved.yaml`) are both found;
each kind gets its own table and plot.

Writes, atomically, into DIR (or `--out`):
    report.md    a markdown table, one row per run (problem, SDE, sampler, NFE requested and
                 spent, the quality metrics with their noise-floor ratios, wall time split into
                 score-function time and the sampler's own time)
    report.png   quality against NFE spent, log-log, one panel per (problem, SDE), one line per
                 sampler (and per differing sampler option), with the noise floor as a band
                 (mean +- std over replicates: what a perfect sampler scores)

The quality on each panel is the Bures-Wasserstein error for single-Gaussian targets and the
sliced Wasserstein-2 distance otherwise (see `sde_gen.sample` and `sde_gen.metrics`).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

from ..io import atomic_save_figure, atomic_write_text

__all__ = ["load_runs", "markdown_table", "plot_quality", "load_training_runs", "training_table", "plot_training", "main"]


def load_runs(root: str) -> List[Dict[str, Any]]:
    """Every metrics.json below `root`, each with its directory under the key "run_dir"."""
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)):
        with open(path) as fh:
            m = json.load(fh)
        m["run_dir"] = os.path.relpath(os.path.dirname(path), root)
        runs.append(m)
    return runs


def _varying_options(runs: List[Dict[str, Any]]) -> Dict[str, List[str]]:
    """Per sampler, the option names (other than nfe) whose values differ between runs."""
    values = defaultdict(lambda: defaultdict(set))
    for r in runs:
        for k, v in r.get("sampler_options", {}).items():
            if k != "nfe":
                values[r["sampler"]][k].add(json.dumps(v, sort_keys=True))
    return {s: sorted(k for k, vs in opts.items() if len(vs) > 1) for s, opts in values.items()}


def _label(run: Dict[str, Any], varying: Dict[str, List[str]]) -> str:
    opts = run.get("sampler_options", {})
    extra = ",".join(f"{k}={opts.get(k)}" for k in varying.get(run["sampler"], []))
    return run["sampler"] + (f" ({extra})" if extra else "")


def _quality(run: Dict[str, Any]):
    """(name, value, floor mean, floor std) of the panel's quality metric, or None."""
    if "bures_wasserstein" in run:
        return "Bures-Wasserstein", run["bures_wasserstein"], run["bw_floor_mean"], run["bw_floor_std"]
    if "sw2" in run:
        return "sliced W2", run["sw2"], run["sw2_floor_mean"], run["sw2_floor_std"]
    return None


def _fmt(v, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def markdown_table(runs: List[Dict[str, Any]]) -> str:
    """A markdown table of `runs` sorted by problem, SDE, sampler and NFE."""
    varying = _varying_options(runs)
    header = (
        "| problem | SDE | sampler | NFE | NFE spent | SW2 | SW2 / floor | mode-weight err | BW | BW / floor "
        "| total s | score s | sampler s | sampler % | run |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    key = lambda r: (str(r.get("problem")), str(r.get("sde")), _label(r, varying), r.get("nfe_requested", 0))
    for r in sorted(runs, key=key):
        floor = r.get("sw2_floor_mean")
        sw = f"{_fmt(r.get('sw2'))}" if "sw2" in r else "-"
        ratio = f"{_fmt(r.get('sw2_ratio'), '.2f')}" if "sw2_ratio" in r else "-"
        bw_ratio = (
            f"{_fmt(r.get('bw_ratio'), '.2f')} (floor {_fmt(r.get('bw_floor_mean'))} ± {_fmt(r.get('bw_floor_std'), '.2g')})"
            if "bw_ratio" in r
            else "-"
        )
        if floor is not None and "sw2_ratio" in r:
            ratio += f" (floor {_fmt(floor)} ± {_fmt(r.get('sw2_floor_std'), '.2g')})"
        frac = r.get("sampler_time_fraction")
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r.get("problem")),
                    str(r.get("sde")),
                    _label(r, varying),
                    str(r.get("nfe_requested")),
                    _fmt(r.get("nfe_spent"), "g"),
                    sw,
                    ratio,
                    _fmt(r.get("mode_weight_error")),
                    _fmt(r.get("bures_wasserstein")),
                    bw_ratio,
                    _fmt(r.get("time_total_s")),
                    _fmt(r.get("time_score_s")),
                    _fmt(r.get("time_sampler_s")),
                    _fmt(None if frac is None else 100 * frac, ".1f"),
                    f"`{r['run_dir']}`",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_quality(runs: List[Dict[str, Any]], path: str) -> None:
    """Quality vs NFE spent (log-log), one panel per (problem, SDE), noise floor as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    varying = _varying_options(runs)
    panels = defaultdict(list)
    for r in runs:
        if _quality(r) is not None:
            panels[(str(r.get("problem")), str(r.get("sde")))].append(r)
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, ((problem, sde), rs) in zip(axes[0], sorted(panels.items())):
        lines = defaultdict(list)
        for r in rs:
            name, value, fm, fs = _quality(r)
            lines[_label(r, varying)].append((r["nfe_spent"], value))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        name, _, fm, fs = _quality(rs[0])
        fms = [_quality(r)[2] for r in rs]
        fss = [_quality(r)[3] for r in rs]
        fm, fs = sum(fms) / len(fms), sum(fss) / len(fss)
        ax.axhspan(max(fm - fs, fm * 1e-3), fm + fs, color="0.8", alpha=0.7, label="noise floor (mean ± std)")
        ax.axhline(fm, color="0.5", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("NFE spent"), ax.set_ylabel(name), ax.set_title(f"{problem} | {sde}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


# ---- training runs ----
def _target_name(node: Dict[str, Any]) -> str:
    name = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    if node.get("schedule") not in (None, "linear"):
        name += f"({node['schedule']})"
    return name


def load_training_runs(root: str) -> List[Dict[str, Any]]:
    """Every training run below `root`: its final evaluation row and the options that define it."""
    import csv

    from omegaconf import OmegaConf

    runs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "metrics.csv"), recursive=True)):
        cfg_path = os.path.join(os.path.dirname(path), "config_resolved.yaml")
        if not os.path.exists(cfg_path):
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path))
        final = {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}
        runs.append({
            "run_dir": os.path.relpath(os.path.dirname(path), root),
            "sde": _target_name(cfg["sde"]), "data": _target_name(cfg["data"]), "model": _target_name(cfg["model"]),
            "weighting": cfg["train"]["weighting"] + ("+IS" if cfg["train"].get("importance_sampling") else ""),
            "seed": cfg.get("seed"), **final,
        })
    return runs


def training_table(runs: List[Dict[str, Any]]) -> str:
    """Markdown table: one row per training run, final quality next to its noise floor."""
    head = "| run | SDE | data | model | weighting | seed | steps | sliced W2 / floor | mode-weight err (floor) | score err (mean over t) |"
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        ratio = r["sw2"] / r["sw2_floor_mean"] if r.get("sw2_floor_mean") else float("nan")
        mode = f"{_fmt(r.get('mode_err'))} ({_fmt(r.get('mode_err_floor_mean'))})" if "mode_err" in r else "–"
        lines.append(f"| {r['run_dir']} | {r['sde']} | {r['data']} | {r['model']} | {r['weighting']} | {r['seed']} | "
                     f"{int(r['step'])} | {_fmt(ratio)} | {mode} | {_fmt(r.get('score_err_mean'))} |")
    return "\n".join(lines) + "\n"


def plot_training(runs: List[Dict[str, Any]], path: str) -> None:
    """Bar chart of the final sliced W2 / noise floor and the mean score error, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['sde']} {r['weighting']} s{r['seed']}" for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(runs) + 1.6))
    ratios = [r["sw2"] / r["sw2_floor_mean"] if r.get("sw2_floor_mean") else float("nan") for r in runs]
    axes[0].barh(labels, ratios, color="C0")
    spread = [1 + 2 * r.get("sw2_floor_std", 0) / r["sw2_floor_mean"] for r in runs if r.get("sw2_floor_mean")]
    if spread:
        axes[0].axvline(1.0, color="k", lw=0.8)
        axes[0].axvline(max(spread), color="0.5", ls="--", lw=0.8, label="floor mean + 2 std")
        axes[0].legend(fontsize=8)
    axes[0].set_title("final sliced W2 / noise floor")
    axes[1].barh(labels, [r.get("score_err_mean", float("nan")) for r in runs], color="C1")
    axes[1].set_xscale("log")
    axes[1].set_title("score error vs the oracle (mean over t)")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point `sde-gen-report DIR [--out OUTDIR]`."""
    parser = argparse.ArgumentParser(prog="sde-gen-report", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a multirun directory (searched recursively for metrics.json)")
    parser.add_argument("--out", default=None, help="where report.md and report.png go (default: root)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"root: no such directory {args.root!r}")
    runs, trains = load_runs(args.root), load_training_runs(args.root)
    if not runs and not trains:
        parser.error(f"root: no metrics.json (sampling) or metrics.csv (training) runs under {args.root!r}")
    out = args.out or args.root
    text = ""
    if runs:
        table = markdown_table(runs)
        text += f"# Sampler report\n\n{len(runs)} runs under `{os.path.abspath(args.root)}`.\n\n{table}\n"
        plot_quality(runs, os.path.join(out, "report.png"))
    if trains:
        table = training_table(trains)
        text += f"# Training report\n\n{len(trains)} runs under `{os.path.abspath(args.root)}`.\n\n{table}"
        plot_training(trains, os.path.join(out, "report_training.png"))
    atomic_write_text(os.path.join(out, "report.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
