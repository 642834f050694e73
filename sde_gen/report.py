"""The report command `sde-gen-report DIR`: aggregate every `metrics.json` under a multirun dir.

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

from .io import atomic_save_figure, atomic_write_text

__all__ = ["load_runs", "markdown_table", "plot_quality", "main"]


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point `sde-gen-report DIR [--out OUTDIR]`."""
    parser = argparse.ArgumentParser(prog="sde-gen-report", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a multirun directory (searched recursively for metrics.json)")
    parser.add_argument("--out", default=None, help="where report.md and report.png go (default: root)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error(f"root: no such directory {args.root!r}")
    runs = load_runs(args.root)
    if not runs:
        parser.error(f"root: no metrics.json found under {args.root!r}")
    out = args.out or args.root
    table = markdown_table(runs)
    text = f"# Sampler report\n\n{len(runs)} runs under `{os.path.abspath(args.root)}`.\n\n{table}"
    atomic_write_text(os.path.join(out, "report.md"), text)
    plot_quality(runs, os.path.join(out, "report.png"))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
