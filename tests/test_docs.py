"""The documentation runs as written, so it cannot go stale.

* Every fenced ```python block of README.md and docs/*.md runs on its own (one test per block, in a
  fresh namespace and a temporary working directory); a block that uses `run_dir` gets a real
  three-step training run.
* Every command in a ```bash block exists: `sde-gen-*` is a console script declared in setup.cfg,
  `python -m X` names an importable module that runs as a program, `make X` a Makefile target, a
  `.py` path a file of the repository; the Hydra overrides of `sde-gen-train|sample|eval` lines
  compose against the shipped configs (sweep lists by their first value).
* Every fenced block says its language (so no command hides in an untagged block), and every
  backticked `sde_gen.x.y` name and repository path in the prose exists.
"""
import configparser
import importlib
import importlib.util
import pathlib
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from sde_gen.config import CONF_DIR, register_configs
from sde_gen.training import train

from .test_train import TINY

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.S | re.M)

# the primary config of each Hydra console script (sde-gen-report is argparse)
APP_CONFIGS = {"sde-gen-train": "config", "sde-gen-sample": "sample", "sde-gen-eval": "eval"}
# programs other than ours that the docs may name
EXTERNAL = {"pip", "pip3", "git", "cd", "export", "torchrun"}


def _blocks(lang):
    """(id "file:line", code) of every fenced block in `lang`, in every documentation file."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1).strip() == lang:
                line = text[: m.start()].count("\n") + 1
                out.append((f"{path.relative_to(REPO)}:{line}", m.group(2)))
    return out


def _console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def _makefile_targets():
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:", (REPO / "Makefile").read_text(), flags=re.M))


PYTHON_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")


def test_docs_have_examples_and_every_fence_names_its_language():
    assert len(PYTHON_BLOCKS) >= 5 and len(BASH_BLOCKS) >= 4, "the docs lost their examples"
    for path in DOCS:
        text = path.read_text()
        opening = [m for i, m in enumerate(re.finditer(r"^```(.*)$", text, flags=re.M)) if i % 2 == 0]
        untagged = [text[: m.start()].count("\n") + 1 for m in opening if not m.group(1).strip()]
        assert not untagged, f"{path.name}: fenced blocks without a language at lines {untagged}"


# ---------------------------------------------------------------- python blocks
@pytest.fixture(scope="module")
def trained_run_dir(tmp_path_factory):
    """A real three-step training run (what a doc block means by `run_dir`)."""
    run_dir = tmp_path_factory.mktemp("docs_run")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "train.steps=3"])
    train(cfg, str(run_dir))
    return str(run_dir)


#: optional packages (extras) a block may need: it is skipped, not failed, where one is not installed
OPTIONAL_PACKAGES = {"diffusers", "safetensors", "k_diffusion", "torchsde"}


@pytest.mark.parametrize("code", [c for _, c in PYTHON_BLOCKS], ids=[i for i, _ in PYTHON_BLOCKS])
def test_python_block_runs(code, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace = {"__name__": "__doc_example__"}
    if re.search(r"\brun_dir\b", code):
        namespace["run_dir"] = request.getfixturevalue("trained_run_dir")
    try:
        exec(compile(code, request.node.callspec.id, "exec"), namespace)
    except ImportError as err:
        missing = err.name.split(".")[0] if err.name else None
        if missing in OPTIONAL_PACKAGES and importlib.util.find_spec(missing) is None:
            pytest.skip(f"the optional package {missing} is not installed")
        raise


# ---------------------------------------------------------------- bash blocks
def _commands(block):
    """Each simple command of a bash block as a list of words (comments, env assignments dropped)."""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part.replace("<", "'<").replace(">", ">'"))  # <placeholders> are words
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            if words:
                yield words


def _compose_overrides(config_name, args):
    """Compose `config_name` with the documented overrides (each sweep by its first value)."""
    overrides = []
    for o in OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")]):
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()))
            overrides.append(f"{o.get_key_element()}={value}")
        else:
            overrides.append(o.input_line)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        compose(config_name=config_name, overrides=overrides)
    GlobalHydra.instance().clear()


_LAUNCHER_PLUGINS = {"local_parallel": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}


@pytest.mark.parametrize("block", [b for _, b in BASH_BLOCKS], ids=[i for i, _ in BASH_BLOCKS])
def test_bash_block_commands_exist(block):
    scripts, targets = _console_scripts(), _makefile_targets()
    assert set(APP_CONFIGS) <= set(scripts), "a Hydra app of this test is no longer a console script"
    register_configs()
    for words in _commands(block):
        prog, args = pathlib.PurePath(words[0]).name, words[1:]
        where = " ".join(words)
        if prog.startswith("sde-gen-"):
            assert prog in scripts, f"{where!r}: no console script {prog!r} in setup.cfg ({sorted(scripts)})"
            launcher = next((a.split("=", 1)[1] for a in args if a.startswith("hydra/launcher=")), None)
            plugin_missing = launcher is not None and importlib.util.find_spec(_LAUNCHER_PLUGINS[launcher]) is None
            placeholder = any("<" in a or a == "..." for a in args)
            if prog in APP_CONFIGS and not placeholder and not plugin_missing:
                _compose_overrides(APP_CONFIGS[prog], args)
        elif prog == "make":
            assert args and args[0] in targets, f"{where!r}: no Makefile target {args[:1]}"
        elif re.match(r"^python[0-9.]*$", prog):
            if args[:1] == ["-m"]:
                module = args[1]
                spec = importlib.util.find_spec(module)
                assert spec is not None, f"{where!r}: no module {module!r}"
                if module.startswith("sde_gen"):
                    source = pathlib.Path(spec.origin).read_text()
                    assert '__name__ == "__main__"' in source, f"{where!r}: {module} does not run as a program"
            else:
                assert args and (REPO / args[0]).is_file(), f"{where!r}: no file {args[:1]}"
        else:
            assert prog in EXTERNAL, f"{where!r}: unknown command {prog!r} (add it to EXTERNAL if it is not ours)"


def test_python_m_commands_in_prose_exist():
    """`python -m sde_gen.x` written in the text (outside code blocks) names a runnable module;
    `python -m sde_gen.<a|b>` stands for each of a and b."""
    found = []
    for path in DOCS:
        for stem, choices in re.findall(r"python -m (sde_gen[\w.]*)(?:<([\w|]+)>)?", FENCE.sub("", path.read_text())):
            found += [(path.name, stem + c) for c in (choices.split("|") if choices else [""])]
    assert found
    for doc, module in found:
        spec = importlib.util.find_spec(module)
        assert spec is not None and '__name__ == "__main__"' in pathlib.Path(spec.origin).read_text(), (doc, module)


# ---------------------------------------------------------------- names and paths in the prose
def _resolve(dotted):
    """Follow `dotted` the way a user reaches it: attributes first, a submodule import only where
    no attribute of that name exists (importing the shim `sde_gen.train` would otherwise replace
    the function `sde_gen.train` by the module)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif hasattr(obj, "__path__"):  # a package: the name may be a submodule not imported yet
            obj = importlib.import_module(".".join(parts[: i + 1]))
        else:
            raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {name!r}")
    return obj


def test_backticked_names_and_paths_exist():
    names, paths = set(), set()
    for path in DOCS:
        prose = FENCE.sub("", path.read_text())
        names |= {(path.name, n) for n in re.findall(r"`(sde_gen(?:\.\w+)+)`", prose)}
        paths |= {(path.name, p) for p in re.findall(r"`((?:sde_gen|benchmarks|notebooks|tests|conf|docs)/[\w./-]*)`", prose)}
    assert names and paths
    for doc, name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as err:
            pytest.fail(f"{doc}: `{name}` does not exist ({err})")
    missing = [(doc, p) for doc, p in sorted(paths) if not (REPO / p).exists()]
    assert not missing, f"paths named in the docs that do not exist: {missing}"


# ---------------------------------------------------------------- printed numbers
def test_readme_library_example_prints_what_an_independent_computation_gives(monkeypatch, tmp_path):
    """The README's ten-line example prints `name nfe sw2` per sampler; rerun the same seeded sampling
    and recompute SW2 with a deterministic quadrature over directions (2-D: angles k pi / K, each 1-D
    W2 from sorted projections of equal-size sets), not the library's random projections."""
    import contextlib
    import io
    import math

    import torch

    from sde_gen import VPSDE, make_preset
    from sde_gen.samplers import sample

    block = next(c for _, c in PYTHON_BLOCKS if "sliced_wasserstein(res.samples" in c and "print(name" in c)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {"__name__": "__doc_example__"})
    printed = [line.split() for line in out.getvalue().splitlines()]
    assert [p[0] for p in printed] == ["euler_maruyama", "dpm_solver"], printed
    sde, ring = VPSDE(), make_preset("ring2d")
    ref = ring.sample(2000, torch.Generator().manual_seed(1)).to(torch.float64)
    angles = torch.arange(720, dtype=torch.float64) * math.pi / 720
    dirs = torch.stack([angles.cos(), angles.sin()])  # (2, K)
    for name, nfe, value in printed:
        res = sample(sde, ring.score_fn(sde), (2000, 2), sampler=name, nfe=20, generator=torch.Generator().manual_seed(0))
        assert int(nfe) == res.nfe <= 20
        px, _ = torch.sort(res.samples.to(torch.float64) @ dirs, dim=0)
        py, _ = torch.sort(ref @ dirs, dim=0)
        sw2 = float((px - py).pow(2).mean().sqrt())
        # the printed value averages 1000 random directions: a few percent of Monte Carlo spread
        assert float(value) == pytest.approx(sw2, rel=0.08), (name, value, sw2)
