"""First-hour fixes (issue 14, item 4): `--help` lists only the config groups an app uses, and every
experiment it lists composes with that app; `group_options` against the config folder."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sde_gen.apps import evaluate as eval_app
from sde_gen.apps import sample as sample_app
from sde_gen.apps import train as train_app
from sde_gen.apps._hydra import group_options
from sde_gen.config import CONF_DIR, register_configs, validate
from sde_gen.config_apps import EvalConf, SampleAppConf

APPS = {"train": (train_app, "config"), "sample": (sample_app, "sample"), "eval": (eval_app, "eval")}
USED = {
    "train": ["sde", "model", "data", "train", "loss", "optimizer", "lr_scheduler", "logger", "sampler", "experiment"],
    "sample": ["sde", "sampler", "experiment"],
    "eval": ["sde", "experiment"],
}


def _listing(text):
    block = text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    rows = [ln.split(":", 1) for ln in block.splitlines() if ":" in ln and not ln.startswith("Compose")]
    return {g.strip(): [o.strip() for o in opts.split(",")] for g, opts in rows}


@pytest.mark.parametrize("app", sorted(APPS))
def test_help_lists_only_the_groups_the_app_uses(app, capsys):
    module, config_name = APPS[app]
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    listing = _listing(text)
    assert list(listing) == USED[app]
    assert f"Groups used by this app: {', '.join(USED[app])}" in " ".join(text.split())  # the footer agrees
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        for experiment in listing["experiment"]:
            cfg = compose(config_name, overrides=[f"experiment={experiment}"])
            if app == "sample":
                validate(OmegaConf.create({k: v for k, v in cfg.items() if k not in ("sde", "sampler")}), SampleAppConf, "s")
            elif app == "eval":
                validate(cfg, EvalConf, "eval")
            else:
                assert "train" in cfg and "num_samples" not in cfg, experiment


def test_group_options_filters(tmp_path):
    (tmp_path / "g").mkdir()
    for name in ("b", "a", "c"):
        (tmp_path / "g" / f"{name}.yaml").write_text("")
    (tmp_path / "g" / "notes.txt").write_text("")
    assert group_options("g", conf_dir=str(tmp_path)) == "g: a, b, c"
    assert group_options("g=c|a", conf_dir=str(tmp_path)) == "g: a, c"
    assert group_options("g-b", "missing", conf_dir=str(tmp_path)) == "g: a, c\nmissing: "
