"""First-hour fixes (issue 14, item 4): `--help` lists only the config groups an app uses (its help
template; the rendered --help in test_checkpoint_security.py), its footer agrees, and every experiment
it lists composes with that app; `group_options` against a folder; the plots say what they show."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sde_gen.apps._hydra import group_options
from sde_gen.config import CONF_DIR, register_configs, validate
from sde_gen.config_apps import EvalConf, SampleAppConf

CONFIGS = {"train": "config", "sample": "sample", "eval": "eval"}
USED = {
    "train": ["sde", "model", "data", "train", "loss", "optimizer", "lr_scheduler", "logger", "sampler", "experiment"],
    "sample": ["sde", "sampler", "experiment"],
    "eval": ["sde", "experiment"],
}


def _listing(config_name):
    """{group: options} as the app's --help lists them (its `hydra.help.template` through
    `group_options`; the rendered --help of each app is checked in test_checkpoint_security.py),
    and the app's footer."""
    import pathlib
    import re

    help_cfg = OmegaConf.to_container(OmegaConf.load(pathlib.Path(CONF_DIR) / f"{config_name}.yaml").hydra.help,
                                      resolve=False)
    args = re.search(r"\$\{sde_gen\.group_options:([^}]*)\}", help_cfg["template"]).group(1)
    specs = [a.strip().strip("'") for a in args.split(",")]
    rows = [line.split(": ", 1) for line in group_options(*specs).splitlines()]
    return {g: [o for o in opts.split(", ") if o] for g, opts in rows}, " ".join(help_cfg["footer"].split())


@pytest.mark.parametrize("app", sorted(CONFIGS))
def test_help_lists_only_the_groups_the_app_uses(app):
    config_name = CONFIGS[app]
    listing, footer = _listing(config_name)
    assert list(listing) == USED[app]
    assert f"Groups used by this app: {', '.join(USED[app])}" in footer  # the footer agrees
    if app == "train":  # every experiment composes and instantiates with train in test_train.py
        assert "sampler_grid" not in listing["experiment"] and "smoke" in listing["experiment"]
        return
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        for experiment in listing["experiment"]:
            cfg = compose(config_name, overrides=[f"experiment={experiment}"])
            if app == "sample":
                validate(OmegaConf.create({k: v for k, v in cfg.items() if k not in ("sde", "sampler")}), SampleAppConf, "s")
            else:
                validate(cfg, EvalConf, "eval")


def test_group_options_filters(tmp_path):
    (tmp_path / "g").mkdir()
    for name in ("b", "a", "c"):
        (tmp_path / "g" / f"{name}.yaml").write_text("")
    (tmp_path / "g" / "notes.txt").write_text("")
    assert group_options("g", conf_dir=str(tmp_path)) == "g: a, b, c"
    assert group_options("g=c|a", conf_dir=str(tmp_path)) == "g: a, c"
    assert group_options("g-b", "missing", conf_dir=str(tmp_path)) == "g: a, c\nmissing: "


# ---------------------------------------------------------------- plots
import itertools  # noqa: E402

import torch  # noqa: E402

from sde_gen import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=True: kept.append(fig))
    yield kept
    for fig in kept:
        plots.pyplot().close(fig)


def test_training_picture_of_64d_data_names_the_coordinates_and_counts_points_outside(figures):
    from sde_gen import build_dataset

    data = build_dataset("mixture64d")
    x = data.test[:200].clone()
    x[:7, 0] = 1e3  # seven samples far outside the data's frame
    plots.plot_samples_vs_data(x, data, "unused.png", step=5)
    fig = figures[-1]
    assert "coordinates 0 and 1 of 64" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes]
    assert "0 of 200 outside the frame" in titles[0] and "7 of 200 outside the frame" in titles[1]
    assert [ax.get_xlabel() for ax in fig.axes] == ["x[0]", "x[0]"]


def test_sample_pictures_say_what_they_show(figures):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g)
    plots.save_picture("unused.png", x, torch.randn(300, 64, generator=g))
    titles = [ax.get_title() for ax in figures[-1].axes]
    assert titles[0].startswith("coordinates 0, 1 of 64") and "of 64 coordinates" in titles[1]
    pts = torch.randn(400, 2, generator=g)
    pts[:3] = 50.0
    plots.save_picture("unused.png", pts, torch.randn(400, 2, generator=g))
    titles = [ax.get_title() for ax in figures[-1].axes]
    assert titles[0] == "samples (3 of 400 outside the frame)" and titles[1].startswith("exact (")


def test_distinct_colours_for_eleven_and_more_lines():
    assert plots.distinct_colours(0) == [] and len(plots.distinct_colours(10)) == 10
    for n in (11, 15, 20):
        cols = plots.distinct_colours(n)
        assert len(set(cols)) == n
        gap = min(sum((a - b) ** 2 for a, b in zip(c1, c2)) ** 0.5 for c1, c2 in itertools.combinations(cols, 2))
        assert gap > 0.1, (n, gap)
    with pytest.raises(ValueError, match="n must be"):
        plots.distinct_colours(-1)


def test_quality_panels_give_every_line_its_own_colour(figures):
    lines = {f"sampler{i}": [(10, 1.0 + i), (20, 0.5 + i)] for i in range(11)}
    plots.plot_quality_panels([("ring2d", "sw2", lines, (0.1, 0.01))], "unused.png")
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in figures[-1].axes[0].get_lines() if line.get_label().startswith("sampler")]
    assert len(colours) == 11 and len(set(colours)) == 11


def test_digit_grid_gaps_differ_from_strokes_and_background():
    x = torch.ones(4, 1, 8, 8)  # white strokes touching every border
    x[1] = -1  # and a black image
    grid = plots.image_grid(x)
    gaps = grid[8::9]
    assert torch.all(gaps == plots.GRID_GAP) and 0.2 < plots.GRID_GAP < 0.8
