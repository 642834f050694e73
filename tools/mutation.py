"""Mutation testing of the core modules, one module at a time against its focused fast tests.

    python tools/mutation.py                      # every core module, fresh, then the score table
    python tools/mutation.py losses metrics       # some modules
    python tools/mutation.py --report             # the table from the last run, no new run
    python tools/mutation.py --survivors losses   # list the live mutants (with `mutmut show` diffs)

`make mutation` installs the `mutation` extra (mutmut) and runs the first form.

How: mutmut 3 (https://github.com/boxed/mutmut) copies the sources into `mutants/` with every
mutant behind a trampoline, maps tests to the functions they call (a stats pass), then runs, per
mutant, only the tests that reach the mutated function. Because mutmut always works in
`./mutants` and reads its options from `setup.cfg`, each module gets its own work copy,
`.mutation/<module>/`, holding `sde_gen/`, `tests/` and a `setup.cfg` whose `[mutmut]` section is
the repository's, with `only_mutate` and the test selection set to that module's. The modules'
mutants and test files are listed in `MODULES` below (the repository's `[mutmut]` section names
their union, so a plain `mutmut run` at the root runs them all in one go).

Score = killed / (mutants - excused), where killed counts a failing test or a timeout, and the
excused mutants are listed one per line with a tag and a reason in `tools/mutation_equivalent.txt`:

    [equivalent]  cannot change behaviour for any valid input (e.g. a clamp bound never reached);
    [cpu-only]    observable only on a CUDA device (a tensor left on or created on the wrong
                  device, or a branch taken only on CUDA); the run here is CPU-only.

The table also gives the strict score, killed / (mutants - [equivalent]), which counts the
cpu-only ones as survivors. A listed mutant that no longer exists or no longer survives is
reported as stale, so the list cannot drift. "no tests" mutants (in functions the focused tests
never call) count as not killed.

The per-module results are written to `.mutation/results.json`; `--markdown` prints the table
as in docs/testing.md.
"""
from __future__ import annotations

import argparse
import configparser
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
EQUIVALENT_FILE = ROOT / "tools" / "mutation_equivalent.txt"
THRESHOLD = 85.0


@dataclass(frozen=True)
class Module:
    """A core module: the files whose functions are mutated and the tests run against them."""

    mutate: Tuple[str, ...]
    tests: Tuple[str, ...]


#: core module -> (files mutated, focused fast tests). Issue 18, item 2.
MODULES: Dict[str, Module] = {
    "losses": Module(("sde_gen/losses.py",), ("tests/test_losses.py", "tests/test_mutation_losses.py",
                                              "tests/test_conditional_training.py::test_dsm_passes_labels_only_when_given",
                                              "tests/test_conditional_training.py::test_conditional_dsm_of_the_exact_class_score_equals_the_analytic_minimum",
                                              "tests/test_conditional_training.py::test_drop_labels_replaces_a_share_p_by_the_token",
                                              "tests/test_classifier.py::test_loss_is_the_cross_entropy_on_x_t_recomputed_by_hand")),
    "metrics": Module(("sde_gen/metrics.py",),
                      ("tests/test_metrics.py", "tests/test_metrics_exact.py", "tests/test_mutation_metrics.py")),
    "oracles": Module(("sde_gen/oracles.py",), ("tests/test_oracles.py", "tests/test_mutation_oracles.py",
                                                "tests/test_guidance.py", "tests/test_data_labels.py",
                                                "tests/test_inverse.py::test_posterior_matches_independent_conditioning",
                                                "tests/test_inverse.py::test_noise_free_posterior_is_exactly_singular_along_the_known_coordinates",
                                                "tests/test_inverse.py::test_singular_posterior_has_the_exact_diffused_score",
                                                "tests/test_inverse.py::test_posterior_bad_input")),
    "sdes": Module(("sde_gen/sdes/*.py",),
                   ("tests/test_sdes.py", "tests/test_numerics.py", "tests/test_mutation_sdes.py")),
    "samplers_base": Module(("sde_gen/samplers/base.py",),
                            ("tests/test_sampler_base.py", "tests/test_mutation_samplers.py",
                             "tests/test_inverse.py::test_every_method_keeps_known_coordinates_on_every_sampler",
                             "tests/test_inverse.py::test_repaint_path_and_cost",
                             "tests/test_inverse.py::test_sampling_bad_input_fails_before_any_work",
                             "tests/test_inverse_tweedie.py::test_every_network_pass_is_counted_and_known_coordinates_are_kept",
                             "tests/test_inverse_tweedie.py::test_bad_options_fail_with_one_clear_error",
                             "tests/test_inverse_tweedie.py::test_repaint_is_refused_by_multistep_samplers_with_one_error")),
    "grids": Module(("sde_gen/samplers/grids.py",),
                    ("tests/test_sampler_base.py", "tests/test_numerics.py", "tests/test_mutation_grids.py")),
    "likelihood": Module(("sde_gen/likelihood/*.py",), ("tests/test_likelihood.py", "tests/test_mutation_likelihood.py")),
    # the training step: the state a step changes (train_state.py) and the learning-rate schedule
    # (optim.py); training.py's loop is exercised by the end-to-end behaviour tests but not mutated
    # (docs/testing.md says why)
    "training_step": Module(("sde_gen/train_state.py", "sde_gen/optim.py"),
                            ("tests/test_training_behaviour.py", "tests/test_mutation_training.py",
                             "tests/test_train.py::test_warmup_scheduler_equals_the_closed_form_bit_for_bit",
                             "tests/test_train.py::test_scheduler_resume_in_the_middle_continues_the_closed_form",
                             "tests/test_train.py::test_scheduler_options_are_checked",
                             "tests/test_train.py::test_resume_gives_identical_parameters",
                             "tests/test_train.py::test_train_state_round_trip_and_old_checkpoints_without_a_scheduler")),
}

# mutmut exit codes -> the classes of the score (mutmut.stats.status_by_exit_code names them)
KILLED, TIMEOUT, SURVIVED, NO_TESTS = "killed", "timeout", "survived", "no tests"


TAGS = ("equivalent", "cpu-only")


def read_equivalent(path: Path = EQUIVALENT_FILE) -> Dict[str, str]:
    """Excused mutants -> tag: `name  # [tag] reason` per line; blank and `#` lines are comments.

    Raises:
        ValueError: a line without a known tag or a reason, or a name listed twice.
    """
    out: Dict[str, str] = {}
    if not path.exists():
        return out
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("#")
        name, rest = name.strip(), rest.strip()
        tag, _, reason = rest.partition("]")
        tag = tag.lstrip("[").strip()
        if not rest.startswith("[") or tag not in TAGS or not reason.strip():
            raise ValueError(f"{path.name}:{i}: expected 'name  # [tag] reason' with tag one of {list(TAGS)}; got {line!r}")
        if name in out:
            raise ValueError(f"{path.name}:{i}: {name} is listed twice")
        out[name] = tag
    return out


def module_config(name: str) -> str:
    """The `setup.cfg` of the work copy: the repository's, with `[mutmut]` narrowed to `name`."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str  # keep key case
    cfg.read(ROOT / "setup.cfg")
    if not cfg.has_section("mutmut"):
        raise SystemExit("setup.cfg has no [mutmut] section")
    mod = MODULES[name]
    missing = [t for t in mod.tests if not (ROOT / t.partition("::")[0]).exists()]
    tests = [t for t in mod.tests if t not in missing]
    if not tests:
        raise SystemExit(f"{name}: none of its test files exists: {missing}")
    cfg.set("mutmut", "only_mutate", "\n" + "\n".join(mod.mutate))
    cfg.set("mutmut", "pytest_add_cli_args_test_selection", "\n" + "\n".join(tests))
    # the work copy is no git repository of its own: compare nothing with git
    cfg.set("mutmut", "use_git_change_detection", "false")
    buf = io.StringIO()
    cfg.write(buf)
    return buf.getvalue()


def prepare(name: str, fresh: bool) -> Path:
    """Create or refresh `.mutation/<name>/` (sources, tests, setup.cfg, pyproject.toml)."""
    work = WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("sde_gen", "tests"):
        dst = work / sub
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(ROOT / sub, dst, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(module_config(name))
    return work


def run_mutmut(work: Path, max_children: int, names: List[str]) -> float:
    """Run `mutmut run` in `work`; returns the wall time in seconds."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the mutated copy, not a checkout, must be what the tests import
    # one thread per worker: the parallelism is mutmut's children; torch's own pool would oversubscribe
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    t0 = time.perf_counter()
    # mutmut redraws a progress line many times a second: keep it in a log, print the outcome
    with open(work / "mutmut.log", "w") as log:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (work / "mutmut.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"mutmut failed in {work} (exit {proc.returncode}); its log ends:\n{tail}")
    return wall


def statuses(work: Path) -> Dict[str, str]:
    """mutant name -> mutmut status, read from the `.meta` files of the work copy."""
    from mutmut.stats import status_by_exit_code

    out: Dict[str, str] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for key, code in data["exit_code_by_key"].items():
            out[key] = status_by_exit_code[code]
    return out


def score(name: str, status: Dict[str, str], equivalent: Dict[str, str]) -> Dict[str, object]:
    """The score row of one module; equivalent entries are matched to this module's mutants."""
    killed = sum(s == KILLED for s in status.values())
    timeout = sum(s == TIMEOUT for s in status.values())
    survivors = sorted(k for k, s in status.items() if s not in (KILLED, TIMEOUT))
    equiv = sorted(k for k in survivors if k in equivalent)
    prefixes = tuple(m.replace("/", ".").removesuffix(".py").removesuffix("*") for m in MODULES[name].mutate)
    stale = sorted(k for k in equivalent if k.startswith(prefixes) and status.get(k) in (None, KILLED, TIMEOUT))
    live = [k for k in survivors if k not in equivalent]
    strict_equiv = [k for k in equiv if equivalent[k] == "equivalent"]
    total = len(status)
    denom, strict_denom = total - len(equiv), total - len(strict_equiv)
    pct = 100.0 * (killed + timeout) / denom if denom else 100.0
    strict = 100.0 * (killed + timeout) / strict_denom if strict_denom else 100.0
    return {"module": name, "mutants": total, "killed": killed, "timeout": timeout,
            "equivalent": len(strict_equiv), "cpu_only": len(equiv) - len(strict_equiv),
            "survived": sum(status[k] == SURVIVED for k in live), "no_tests": sum(status[k] == NO_TESTS for k in live),
            "other": sum(status[k] not in (SURVIVED, NO_TESTS) for k in live),
            "score": round(pct, 1), "strict": round(strict, 1), "live": live, "stale_equivalent": stale}


def table(rows: List[Dict[str, object]], markdown: bool) -> str:
    cols = ("module", "mutants", "killed", "timeout", "equivalent", "cpu_only", "survived", "no_tests", "other",
            "score", "strict", "wall_s")
    if markdown:
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        return "\n".join(out)
    out = ["".join(f"{c:>11}" for c in cols)]
    out += ["".join(f"{str(r.get(c, '')):>11}" for c in cols) for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"of {sorted(MODULES)} (default: all)")
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    ap.add_argument("--keep", action="store_true",
                    help="reuse the work copy's results; only mutants not yet decided (and --retest ones) run")
    ap.add_argument("--retest", action="store_true", help="with --keep: rerun the live mutants (after adding tests)")
    ap.add_argument("--report", action="store_true", help="print the table of the last run; run nothing")
    ap.add_argument("--survivors", action="store_true", help="also print the live mutants' diffs")
    ap.add_argument("--markdown", action="store_true", help="the table in Markdown")
    ap.add_argument("--fail-under", type=float, default=THRESHOLD, help="exit 1 when a module scores below (default 85)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; the core modules are {sorted(MODULES)}")
    names = args.modules or list(MODULES)
    equivalent = read_equivalent()
    results_file = WORK / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    rows, failed = [], []
    for name in names:
        work = WORK / name
        wall = previous.get(name, {}).get("wall_s")
        if not args.report:
            if args.keep and args.retest and (work / "mutants").exists():
                # the live ones, and the timeouts: a hang can come from the run, not the mutant
                st = statuses(work)
                again = score(name, st, equivalent)["live"] + sorted(k for k, s in st.items() if s == TIMEOUT)
            else:
                again = []
            work = prepare(name, fresh=not args.keep)
            print(f"== {name}: mutating {', '.join(MODULES[name].mutate)}", flush=True)
            try:
                wall = run_mutmut(work, args.max_children, again)
                # a changed test selection (a new test file) makes mutmut forget every verdict it
                # did not rerun: decide those too
                undecided = [k for k, s in statuses(work).items() if s == "not checked"]
                if again and undecided:
                    wall += run_mutmut(work, args.max_children, undecided)
                wall = round(wall, 1)
            except RuntimeError as err:  # one module's failure does not lose the others' results
                print(err, flush=True)
                failed.append(name)
                continue
        if not (work / "mutants").exists():
            print(f"== {name}: no run yet")
            continue
        row = score(name, statuses(work), equivalent)
        row["wall_s"] = wall
        rows.append(row)
        previous[name] = {k: v for k, v in row.items()}
    WORK.mkdir(exist_ok=True)
    results_file.write_text(json.dumps(previous, indent=1))
    print(table(rows, args.markdown))
    bad = False
    for row in rows:
        if row["stale_equivalent"]:
            bad = True
            print(f"{row['module']}: stale entries in {EQUIVALENT_FILE.name} (killed or gone): {row['stale_equivalent']}")
        if row["live"]:
            print(f"{row['module']}: {len(row['live'])} live mutants: {' '.join(row['live'])}")
            if args.survivors:
                for k in row["live"]:
                    subprocess.run([sys.executable, "-m", "mutmut", "show", k], cwd=WORK / row["module"])
        if row["score"] < args.fail_under:
            bad = True
            print(f"{row['module']}: score {row['score']} % is below {args.fail_under} %")
    if failed:
        print(f"mutmut failed for {failed}")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
