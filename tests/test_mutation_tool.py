"""The mutation-testing driver (tools/mutation.py): its module table agrees with setup.cfg's
[mutmut] section and names files that exist, the excused-mutant list parses (and every entry of
the committed one has a known tag), and the score is killed / (mutants - excused)."""
import configparser
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _section():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return {k: [v for v in cfg.get("mutmut", k).split("\n") if v] for k in ("only_mutate", "pytest_add_cli_args_test_selection")}


def test_modules_match_the_setup_cfg_union_and_exist(tool):
    sec = _section()
    mutated = [p for m in tool.MODULES.values() for p in m.mutate]
    assert sorted(mutated) == sorted(sec["only_mutate"])
    for pattern in mutated:
        assert list(ROOT.glob(pattern)), pattern
    selected = {t for m in tool.MODULES.values() for t in m.tests}
    assert set(sec["pytest_add_cli_args_test_selection"]) == selected
    # every core module has at least one test file that exists (new ones are optional)
    for name, m in tool.MODULES.items():
        assert any((ROOT / t.partition("::")[0]).exists() for t in m.tests), name


def test_module_config_narrows_the_section(tool):
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(tool.module_config("losses"))
    assert cfg.get("mutmut", "only_mutate").split() == ["sde_gen/losses.py"]
    assert "tests/test_losses.py" in cfg.get("mutmut", "pytest_add_cli_args_test_selection").split()
    assert cfg.get("mutmut", "use_git_change_detection") == "false"


def test_committed_list_parses(tool):
    listed = tool.read_equivalent()
    assert set(listed.values()) <= set(tool.TAGS)


def test_list_format_errors(tool, tmp_path):
    p = tmp_path / "eq.txt"
    p.write_text("# comment\n\na.b__mutmut_1  # [equivalent] never reached\nc.d__mutmut_2  # [cpu-only] same device\n")
    assert tool.read_equivalent(p) == {"a.b__mutmut_1": "equivalent", "c.d__mutmut_2": "cpu-only"}
    for bad in ("a.b__mutmut_1\n", "a.b__mutmut_1  # no tag\n", "a.b__mutmut_1  # [other] x\n", "a.b__mutmut_1  # [equivalent]\n",
                "a  # [equivalent] x\na  # [equivalent] y\n"):
        p.write_text(bad)
        with pytest.raises(ValueError):
            tool.read_equivalent(p)


def test_score_arithmetic(tool):
    status = {"sde_gen.losses.x_f__mutmut_1": "killed", "sde_gen.losses.x_f__mutmut_2": "timeout",
              "sde_gen.losses.x_f__mutmut_3": "survived", "sde_gen.losses.x_f__mutmut_4": "survived",
              "sde_gen.losses.x_f__mutmut_5": "survived", "sde_gen.losses.x_f__mutmut_6": "no tests"}
    excused = {"sde_gen.losses.x_f__mutmut_3": "equivalent", "sde_gen.losses.x_f__mutmut_4": "cpu-only",
               "sde_gen.losses.x_f__mutmut_1": "equivalent", "sde_gen.metrics.x_g__mutmut_1": "equivalent"}
    row = tool.score("losses", status, excused)
    assert (row["killed"], row["timeout"], row["equivalent"], row["cpu_only"], row["survived"], row["no_tests"]) == (1, 1, 1, 1, 1, 1)
    assert row["score"] == round(100 * 2 / 4, 1) and row["strict"] == round(100 * 2 / 5, 1)
    # a listed mutant that was killed is stale; another module's entries are not this one's business
    assert row["stale_equivalent"] == ["sde_gen.losses.x_f__mutmut_1"]
    assert row["live"] == ["sde_gen.losses.x_f__mutmut_5", "sde_gen.losses.x_f__mutmut_6"]
