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
sliced Wasserstein-2 distance otherwise (see `sde_gen.apps.sample` and `sde_gen.metrics`).

Class-conditional sampling runs (a `class_metrics` entry: oracle data sampled with `label=` or
`guidance.kind=cfg|classifier`, e.g. a sweep `-m guidance.kind=cfg guidance.scale=0,1,2,4`) also get
a guidance table in report.md (one row per run: guidance kind and scale, class purity and its
lowest class, per-class sliced W2 / noise floor as mean and max over classes, NFE spent and the
batch-equivalent NFE) and report_guidance.png: purity against the mean per-class ratio, one point
per scale, one line per (problem, SDE, sampler, NFE, kind, label): the purity-diversity trade-off.

A run whose files cannot be read or parsed (a truncated metrics.json, a garbled metrics.csv, a
folder named like one) is named in a warning on stderr and left out; the others are reported. When
nothing readable remains, or the output cannot be written, the command prints one error line and
exits with code 2.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import warnings
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io import atomic_write_text
from ..plots import plot_guidance_sweep, plot_quality_panels, plot_training_bars

__all__ = ["load_runs", "markdown_table", "plot_quality", "guidance_table", "plot_guidance", "load_training_runs",
           "training_table", "plot_training", "main"]

#: (path, reason) of a file that was left out of the report
Skipped = List[Tuple[str, str]]

# keys a sampling run's metrics.json must have for its table row (written by every sde-gen-sample)
_SAMPLE_KEYS = ("sampler", "nfe_spent")
# columns a training run's final metrics.csv row must have for its table row
_TRAIN_COLUMNS = ("step", "sw2")


# numbers the table and the plot compute with (when present)
_NUMERIC_KEYS = (
    "nfe_spent", "sw2", "sw2_floor_mean", "sw2_floor_std", "sw2_ratio", "bures_wasserstein", "bw_floor_mean",
    "bw_floor_std", "bw_ratio", "mode_weight_error", "time_total_s", "time_score_s", "time_sampler_s",
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _skip(skipped: Optional[Skipped], path: str, reason: str) -> None:
    """Record a file left out: in `skipped` when the caller collects them, else as a warning."""
    if skipped is not None:
        skipped.append((path, reason))
    else:
        warnings.warn(f"skipping {path}: {reason}", stacklevel=3)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def load_runs(root: str, skipped: Optional[Skipped] = None) -> List[Dict[str, Any]]:
    """Every readable metrics.json below `root`, each with its directory under the key "run_dir".

    Args:
        root: the folder searched recursively.
        skipped: when given, each file left out (unreadable, not JSON, not a sampling run's
            metrics) is appended as (path, reason); otherwise each is a `warnings.warn`.
    """
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)):
        try:
            with open(path) as fh:
                m = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
            _skip(skipped, path, _reason(err))
            continue
        if not isinstance(m, dict):
            _skip(skipped, path, f"not a JSON object (a {type(m).__name__})")
            continue
        missing = [k for k in _SAMPLE_KEYS if k not in m]
        if missing:
            _skip(skipped, path, f"no {', '.join(missing)}: not the metrics of an sde-gen-sample run")
            continue
        bad = [k for k in _NUMERIC_KEYS if k in m and not _is_number(m[k])]
        if bad:
            _skip(skipped, path, f"{', '.join(bad)} not a number")
            continue
        garbled = _class_metrics_problem(m)
        if garbled:
            _skip(skipped, path, garbled)
            continue
        m["run_dir"] = os.path.relpath(os.path.dirname(path), root)
        runs.append(m)
    return runs


def _class_metrics_problem(m: Dict[str, Any]) -> Optional[str]:
    """Why a run's class-conditional entries cannot be reported, or None (none there, or sound)."""
    if "class_metrics" not in m:
        return None
    cm = m["class_metrics"]
    if not isinstance(cm, dict) or not isinstance(cm.get("per_class"), dict):
        return "class_metrics is not an object with per_class"
    if "class_purity" in cm and not _is_number(cm["class_purity"]):
        return "class_metrics.class_purity not a number"
    for c, row in cm["per_class"].items():
        if not isinstance(row, dict) or any(not _is_number(row[k]) for k in ("purity", "sw2_ratio") if k in row):
            return f"class_metrics.per_class[{c}] purity or sw2_ratio not a number"
    g = m.get("guidance", {"kind": "none", "scale": 1.0})
    if not isinstance(g, dict) or not isinstance(g.get("kind"), str) or not _is_number(g.get("scale")):
        return "guidance is not {kind, scale}"
    return None


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
    """(name, value, floor mean, floor std) of the panel's quality metric, or None (none recorded)."""
    for name, keys in (("Bures-Wasserstein", ("bures_wasserstein", "bw_floor_mean", "bw_floor_std")),
                       ("sliced W2", ("sw2", "sw2_floor_mean", "sw2_floor_std"))):
        if all(k in run for k in keys):
            return (name, *(run[k] for k in keys))
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
    varying = _varying_options(runs)
    by_panel = defaultdict(list)
    for r in runs:
        if _quality(r) is not None:
            by_panel[(str(r.get("problem")), str(r.get("sde")))].append(r)
    panels = []
    for (problem, sde), rs in sorted(by_panel.items()):
        lines = defaultdict(list)
        for r in rs:
            lines[_label(r, varying)].append((r["nfe_spent"], _quality(r)[1]))
        floors = [_quality(r)[2:] for r in rs]
        floor = (sum(f[0] for f in floors) / len(floors), sum(f[1] for f in floors) / len(floors))
        panels.append((f"{problem} | {sde}", _quality(rs[0])[0], dict(lines), floor))
    plot_quality_panels(panels, path)


# ---- class-conditional runs: the guidance sweep ----
def _guided_runs(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The runs with class metrics to report (at least one sample survived: a purity)."""
    return [r for r in runs if "class_purity" in r.get("class_metrics", {})]


def _per_class_ratios(run: Dict[str, Any]) -> List[float]:
    """The per-class sliced W2 / noise floor ratios of a run (classes with >= 2 samples)."""
    return [row["sw2_ratio"] for row in run["class_metrics"]["per_class"].values() if "sw2_ratio" in row]


def _guidance(run: Dict[str, Any]) -> Tuple[str, float]:
    g = run.get("guidance") or {"kind": "none", "scale": 1.0}
    return g["kind"], float(g["scale"])


def _setting(run: Dict[str, Any], varying: Dict[str, List[str]]) -> Tuple[str, ...]:
    """What a guidance-sweep line holds fixed: everything but the scale."""
    return (str(run.get("problem")), str(run.get("sde")), _label(run, varying), str(run.get("nfe_requested")),
            _guidance(run)[0], json.dumps(run.get("label")))


def guidance_table(runs: List[Dict[str, Any]]) -> str:
    """A markdown table of the class-conditional `runs`, one row each, sorted by setting then scale.

    Columns: problem, SDE, sampler, NFE, guidance kind, scale, label (as requested: "all" for
    every class), class purity, the lowest per-class purity, the per-class sliced W2 / noise floor
    (mean and max over classes), NFE spent, batch-equivalent NFE (NFE x forwards of batch B per
    call), run folder.
    """
    varying = _varying_options(runs)
    header = ("| problem | SDE | sampler | NFE | guidance | scale | label | class purity | purity min "
              "| per-class SW2 / floor mean | per-class SW2 / floor max | NFE spent | batch-equiv. NFE | run |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in sorted(_guided_runs(runs), key=lambda r: (_setting(r, varying), _guidance(r)[1], r["run_dir"])):
        kind, scale = _guidance(r)
        ratios = _per_class_ratios(r)
        cm = r["class_metrics"]
        label = r.get("label")
        lines.append("| " + " | ".join([
            str(r.get("problem")), str(r.get("sde")), _label(r, varying), str(r.get("nfe_requested")), kind,
            format(scale, "g"), "all" if label is None else json.dumps(label).replace("|", "/"),
            _fmt(cm["class_purity"], ".4f"), _fmt(cm.get("class_purity_min"), ".4f"),
            _fmt(sum(ratios) / len(ratios) if ratios else None, ".2f"), _fmt(max(ratios) if ratios else None, ".2f"),
            _fmt(r.get("nfe_spent"), "g"), _fmt(r.get("batch_equivalent_nfe"), "g"), f"`{r['run_dir']}`",
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_guidance(runs: List[Dict[str, Any]], path: str) -> None:
    """Class purity vs the mean per-class sliced W2 / floor, one labelled point per guidance scale."""
    varying = _varying_options(runs)
    lines = defaultdict(list)
    for r in _guided_runs(runs):
        ratios = _per_class_ratios(r)
        if ratios:
            lines[_setting(r, varying)].append((_guidance(r)[1], sum(ratios) / len(ratios), r["class_metrics"]["class_purity"]))
    named = []
    for (problem, sde, sampler, nfe, kind, label), pts in sorted(lines.items()):
        label = "all" if label == "null" else label
        named.append((f"{problem} | {sde} | {sampler} NFE {nfe} | {kind} | label {label}", pts))
    plot_guidance_sweep(named, path)


# ---- training runs ----
def _target_name(node: Dict[str, Any]) -> str:
    name = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    if node.get("schedule") not in (None, "linear"):
        name += f"({node['schedule']})"
    return name


def _training_run(path: str, cfg_path: str, root: str) -> Optional[Dict[str, Any]]:
    """One training run's row, or None when its metrics.csv has no evaluation yet.

    Raises:
        OSError, ValueError, KeyError, TypeError or an OmegaConf error for unreadable files.
    """
    import csv

    from omegaconf import OmegaConf

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    # a row with more fields than the header puts the extras under the key None
    final = {k: float(v) for k, v in rows[-1].items() if k is not None and v not in ("", None)}
    missing = [c for c in _TRAIN_COLUMNS if c not in final]
    if missing:
        raise ValueError(f"the last row has no {', '.join(missing)}")
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path))
    if not isinstance(cfg, dict):
        raise ValueError(f"{os.path.basename(cfg_path)} is not a mapping")
    return {
        "run_dir": os.path.relpath(os.path.dirname(path), root),
        "sde": _target_name(cfg["sde"]), "data": _target_name(cfg["data"]), "model": _target_name(cfg["model"]),
        # the loss options are the `loss:` node since it became a config group (before: in `train:`)
        "weighting": (cfg.get("loss") or cfg["train"])["weighting"]
        + ("+IS" if (cfg.get("loss") or cfg["train"]).get("importance_sampling") else ""),
        "seed": cfg.get("seed"), **final,
    }


def load_training_runs(root: str, skipped: Optional[Skipped] = None) -> List[Dict[str, Any]]:
    """Every readable training run below `root`: its final evaluation row and its defining options.

    A metrics.csv without `config_resolved.yaml` beside it (not a training run) or without rows
    (no evaluation yet) is passed over silently.

    Args:
        root: the folder searched recursively.
        skipped: when given, each run left out because a file is unreadable or garbled is appended
            as (path, reason); otherwise each is a `warnings.warn`.
    """
    from omegaconf.errors import OmegaConfBaseException

    runs = []
    for path in sorted(glob.glob(os.path.join(root, "**", "metrics.csv"), recursive=True)):
        cfg_path = os.path.join(os.path.dirname(path), "config_resolved.yaml")
        if not os.path.exists(cfg_path):
            continue
        try:
            run = _training_run(path, cfg_path, root)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, OmegaConfBaseException) as err:
            _skip(skipped, path, _reason(err))
            continue
        if run is not None:
            runs.append(run)
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
    plot_training_bars(
        labels=[f"{r['sde']} {r['weighting']} s{r['seed']}" for r in runs],
        ratios=[r["sw2"] / r["sw2_floor_mean"] if r.get("sw2_floor_mean") else float("nan") for r in runs],
        floor_spread=[1 + 2 * r.get("sw2_floor_std", 0) / r["sw2_floor_mean"] for r in runs if r.get("sw2_floor_mean")],
        score_errors=[r.get("score_err_mean", float("nan")) for r in runs],
        path=path,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point `sde-gen-report DIR [--out OUTDIR]`.

    Returns:
        0 on success. Bad input (no such folder, nothing readable, an output that cannot be
        written) exits with code 2 after one `sde-gen-report: error: ...` line on stderr.
    """
    prog = "sde-gen-report"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a multirun directory (searched recursively for metrics.json and metrics.csv)")
    parser.add_argument("--out", default=None, help="where report.md and report.png go (default: root)")
    args = parser.parse_args(argv)

    def fail(message: str):
        parser.exit(2, f"{prog}: error: {message}\n")

    if not os.path.isdir(args.root):
        fail(f"root: no such directory {args.root!r}")
    skipped: Skipped = []
    runs, trains = load_runs(args.root, skipped), load_training_runs(args.root, skipped)
    for path, reason in skipped:
        print(f"{prog}: warning: skipping {path}: {reason}", file=sys.stderr)
    if not runs and not trains:
        what = f" ({len(skipped)} unreadable, named above)" if skipped else ""
        fail(f"root: no readable metrics.json (sampling) or metrics.csv (training) runs under {args.root!r}{what}")
    out = args.out or args.root
    text = ""
    try:
        if runs:
            table = markdown_table(runs)
            text += f"# Sampler report\n\n{len(runs)} runs under `{os.path.abspath(args.root)}`.\n\n{table}\n"
            plot_quality(runs, os.path.join(out, "report.png"))
            guided = _guided_runs(runs)
            if guided:
                text += (f"# Guidance report\n\n{len(guided)} class-conditional runs: class purity (share of samples whose "
                         "exact posterior class is the requested one) against per-class sliced W2 / noise floor "
                         f"(1 = as close as exact class samples).\n\n{guidance_table(runs)}\n")
                plot_guidance(runs, os.path.join(out, "report_guidance.png"))
        if trains:
            table = training_table(trains)
            text += f"# Training report\n\n{len(trains)} runs under `{os.path.abspath(args.root)}`.\n\n{table}"
            plot_training(trains, os.path.join(out, "report_training.png"))
        atomic_write_text(os.path.join(out, "report.md"), text)
    except OSError as err:  # --out not writable, a file where a folder should be, a full disk
        fail(f"out: cannot write the report into {out!r} ({_reason(err)})")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
