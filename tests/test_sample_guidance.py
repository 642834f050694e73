"""Class labels and guidance in `sde-gen-sample`, and the guidance sweep in `sde-gen-report`.

The exact answers: on the ring (8 classes, one per component) the class of a sample is recomputed
here with scipy's Gaussian densities; samples a run writes are redrawn by calling the library's
sampler on the score the run should have used (built here without the app); metrics.json is
recomputed from samples.pt and labels.pt; the report's cells from each run's metrics.json.
Classifier guidance and classifier-free guidance on the oracle are two routes to the same tilted
score (Bayes' rule: autograd of the exact class posterior vs difference of exact scores), so their
samples agree to rounding.

Bad input (a label outside [0, C), a label or cfg for an unconditional checkpoint, classifier
guidance without a classifier, a classifier with another class count or SDE, ...) ends in one
stderr line naming the option, exit code 2, before any sampling.
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sde_gen import VESDE, VPSDE, make_preset
from sde_gen.apps import sample as sample_app
from sde_gen.apps.report import main as report_main
from sde_gen.apps.sample import class_labels
from sde_gen.apps.sample import main as sample_main
from sde_gen.checkpoint import load_trained
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.evaluation import class_metrics
from sde_gen.guidance import classifier_free, classifier_guided
from sde_gen.plots import GRID_GAP, class_image_grid, image_grid, save_picture
from sde_gen.samplers import build_sampler
from sde_gen.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
#: metrics settings small enough for the fast suite; class_metrics is recomputed with the same ones
PROJ, REPS, MSEED = 64, 3, 12345
SMALL = [f"noise_floor_replicates={REPS}", f"num_projections={PROJ}", f"metrics_seed={MSEED}", "device=cpu"]
TINY_TRAIN = [
    "model.hidden=8", "model.depth=1", "model.time_embed_dim=8", "train.batch_size=16", "lr_scheduler.warmup=0",
    "train.eval_samples=16", "train.eval_projections=4", "train.noise_floor_replicates=2",
    "train.score_error_samples=8", "train.progress=false", "train.plots=false", "train.log_every=1",
    "sampler.nfe=2", "device=cpu", "train.steps=1",
]


pytestmark = pytest.mark.usefixtures("hydra_full_errors")


def _run(tmp, *overrides):
    sample_main([*overrides, f"hydra.run.dir={tmp}", *SMALL])
    samples = torch.load(tmp / "samples.pt", weights_only=True)
    labels = torch.load(tmp / "labels.pt", weights_only=True) if (tmp / "labels.pt").exists() else None
    return samples, labels, json.loads((tmp / "metrics.json").read_text())


def _ring_class_scipy(x):
    """MAP class of each row of x under the ring's p_0 (each component its own class), by scipy."""
    ring = make_preset("ring2d")
    w, means = ring.weights.numpy(), ring.means.numpy()
    cov = ring.covariances()[0].numpy()
    logd = np.stack([np.log(wk) + scipy.stats.multivariate_normal(m, cov).logpdf(x) for wk, m in zip(w, means)], 1)
    return logd.argmax(1)


def _recomputed_class_metrics(samples, labels):
    out = class_metrics(samples, labels, make_preset("ring2d"), PROJ, REPS, MSEED)
    out["per_class"] = {str(c): row for c, row in out["per_class"].items()}
    return out


def _direct(sde, score, n, sampler="euler_maruyama", nfe=20, seed=0):
    """The samples a run with this score should give: the library's sampler, called here."""
    res = build_sampler(sampler, nfe=nfe)(sde, score, shape=(n, 2), generator=torch.Generator().manual_seed(seed),
                                          dtype=torch.float32)
    return res.samples


# ---------------------------------------------------------------- labels: which rows ask for which class
@pytest.mark.parametrize("label, n, expected", [
    (None, 11, {0: 2, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}),  # 11 = 8 + 3: classes 0, 1, 2 get one more
    (None, 8, {c: 1 for c in range(8)}),
    (3, 5, {3: 5}),
    ([5, 1], 7, {5: 4, 1: 3}),  # the remainder goes to the class listed first
    ([7, 0, 4], 3, {7: 1, 0: 1, 4: 1}),
])
def test_class_labels_share_the_samples_equally_in_the_order_given(label, n, expected):
    y = class_labels(label, 8, n)
    assert y.dtype == torch.long and y.shape == (n,)
    assert {c: int((y == c).sum()) for c in expected} == expected and sum(expected.values()) == n
    # contiguous blocks in the order requested
    order = [] if n == 0 else [int(y[0])] + [int(b) for a, b in zip(y[:-1], y[1:]) if a != b]
    assert order == list(expected)


@pytest.mark.parametrize("label", [8, [1, 8], -1])
def test_class_labels_out_of_range_name_the_range(label):
    with pytest.raises(ValueError, match=r"label must lie in \[0, 8\)"):
        class_labels(label, 8, 10)


# ---------------------------------------------------------------- the oracle source
def test_label_without_guidance_samples_the_exact_class(tmp_path):
    n = 600
    samples, labels, m = _run(tmp_path, "problem=ring2d", "label=3", f"num_samples={n}", "sampler.nfe=20")
    assert torch.equal(labels, torch.full((n,), 3, dtype=torch.long))
    # the class of each sample, recomputed with scipy: all but a few from class 3, the mean at its centre
    cls = _ring_class_scipy(samples.double().numpy())
    assert (cls == 3).mean() >= 0.99
    centre = make_preset("ring2d").means[3].numpy()
    assert np.linalg.norm(samples.double().numpy().mean(0) - centre) < 0.05  # 0.2 / sqrt(600) = 0.008 per axis
    # metrics.json: the class metrics of samples.pt / labels.pt, the purity that scipy gives
    assert m["class_metrics"] == _recomputed_class_metrics(samples, labels)
    assert m["class_metrics"]["class_purity"] == pytest.approx((cls == 3).mean(), abs=1.5 / n)
    assert m["guidance"] == {"kind": "none", "scale": 1.0} and m["label"] == 3 and m["num_classes"] == 8
    assert m["label_counts"] == {"3": n} and m["batch_cost"] == 1 and m["batch_equivalent_nfe"] == m["nfe_spent"]
    # the unconditional metrics compare with p_0, which is not the law asked for: left out
    assert "sw2" not in m and "mode_weight_error" not in m
    assert (tmp_path / "samples.png").stat().st_size > 1000


def test_default_labels_split_every_class_equally_across_batches(tmp_path):
    n = 803  # 8 x 100 + 3, drawn in batches of 300: each batch takes its own slice of the labels
    samples, labels, m = _run(tmp_path, "problem=ring2d", "guidance.kind=cfg", f"num_samples={n}", "batch_size=300",
                              "sampler=dpm_solver", "sampler.nfe=10", "plot=false")
    assert torch.equal(labels, class_labels(None, 8, n))
    assert m["label_counts"] == {str(c): 101 if c < 3 else 100 for c in range(8)} and m["label"] is None
    assert m["num_batches"] == 3
    # every row is from the class it asked for: a batch given another batch's labels would not be
    cls = _ring_class_scipy(samples.double().numpy())
    assert (cls == labels.numpy()).mean() >= 0.99
    assert m["class_metrics"] == _recomputed_class_metrics(samples, labels)
    assert {c: r["num_samples"] for c, r in m["class_metrics"]["per_class"].items()} == m["label_counts"]


@pytest.mark.statistical
def test_cfg_at_scale_zero_is_unconditional_sampling(tmp_path, stat_seed):
    seed, n = stat_seed(5), 800
    common = ["problem=ring2d", f"num_samples={n}", f"seed={seed}", "sampler.nfe=20", "plot=false"]
    guided, labels, m = _run(tmp_path / "cfg0", *common, "guidance.kind=cfg", "guidance.scale=0")
    plain, none_labels, _ = _run(tmp_path / "plain", *common)
    # scale 0 calls the model with the no-label token only: the unconditional score, the same draws
    assert none_labels is None and torch.equal(guided, plain)
    assert m["batch_cost"] == 1 and m["batch_equivalent_nfe"] == m["nfe_spent"]
    # so each requested class is hit as often as the prior puts mass on it (within 4 standard errors)
    w = make_preset("ring2d").class_weights().numpy()
    for c, row in m["class_metrics"]["per_class"].items():
        k, wc = row["num_samples"], w[int(c)]
        assert abs(row["purity"] - wc) < 4 * math.sqrt(wc * (1 - wc) / k) + 1e-3, (c, row["purity"], wc)
    cls = _ring_class_scipy(guided.double().numpy())
    assert m["class_metrics"]["class_purity"] == pytest.approx((cls == labels.numpy()).mean(), abs=1.5 / n)


def test_classifier_guidance_on_the_oracle_is_cfg_by_bayes_rule(tmp_path):
    common = ["problem=ring2d", "label=[1,5]", "num_samples=200", "guidance.scale=2", "sampler=dpm_solver",
              "sampler.nfe=10", "plot=false"]
    by_classifier, labels, m = _run(tmp_path / "clf", *common, "guidance.kind=classifier")
    by_cfg, labels_cfg, m_cfg = _run(tmp_path / "cfg", *common, "guidance.kind=cfg")
    assert torch.equal(labels, labels_cfg) and m["label_counts"] == {"1": 100, "5": 100}
    # the run's draws are the library sampler on the exact classifier-guided score
    sde, ring = VPSDE(), make_preset("ring2d")
    direct = _direct(sde, classifier_guided(ring.score_fn(sde), ring.classifier(sde), labels, 2.0), 200, "dpm_solver", 10)
    torch.testing.assert_close(by_classifier, direct, rtol=0, atol=0)
    # grad log p(y | x) by autograd of the exact posterior = class score - score: the same samples
    torch.testing.assert_close(by_classifier, by_cfg, rtol=1e-4, atol=1e-4)
    # cost: classifier guidance is one score forward per call, cfg at s = 2 one forward of batch 2B
    assert m["batch_cost"] == 1 and m["batch_equivalent_nfe"] == m["nfe_spent"] == 10
    assert m_cfg["batch_cost"] == 2 and m_cfg["batch_equivalent_nfe"] == 2 * m_cfg["nfe_spent"] == 20
    assert m["class_metrics"]["class_purity"] >= 0.98 and m["guidance"] == {"kind": "classifier", "scale": 2.0}


# ---------------------------------------------------------------- the guidance sweep and its report
def _table(text, first_column):
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |") and "class purity" in line)
    header = [c.strip() for c in lines[top].strip("|").split("|")]
    rows = []
    for line in lines[top + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))))
    return rows


def test_guidance_scale_sweep_then_report_table_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    sample_main(["-m", "problem=ring2d", "guidance.kind=cfg", "guidance.scale=0,1,4", "sampler=dpm_solver",
                 "sampler.nfe=10", "num_samples=400", "plot=false", f"hydra.sweep.dir={sweep}", *SMALL])
    assert len(list(sweep.rglob("metrics.json"))) == 3
    assert report_main([str(sweep)]) == 0
    rows = _table((sweep / "report.md").read_text(), "problem")
    assert [r["scale"] for r in rows] == ["0", "1", "4"]
    purity = []
    for row in rows:
        run = sweep / row["run"].strip("`")
        m = json.loads((run / "metrics.json").read_text())
        samples = torch.load(run / "samples.pt", weights_only=True)
        labels = torch.load(run / "labels.pt", weights_only=True)
        # the run's metrics are those of its samples, and the row's cells are the run's metrics
        assert m["class_metrics"] == _recomputed_class_metrics(samples, labels)
        per = m["class_metrics"]["per_class"].values()
        ratios = [r["sw2"] / r["sw2_floor_mean"] for r in per]
        scale = float(row["scale"])
        assert m["guidance"] == {"kind": "cfg", "scale": scale} and row["guidance"] == "cfg" and row["label"] == "all"
        assert row["class purity"] == format(m["class_metrics"]["class_purity"], ".4f")
        assert row["purity min"] == format(min(r["purity"] for r in per), ".4f")
        assert row["per-class SW2 / floor mean"] == format(sum(ratios) / len(ratios), ".2f")
        assert row["per-class SW2 / floor max"] == format(max(ratios), ".2f")
        assert row["NFE spent"] == format(m["nfe_spent"], "g")
        # one forward of batch 2B per call, except at s = 0 and 1 (one of batch B)
        assert row["batch-equiv. NFE"] == format(m["nfe_spent"] * (1 if scale in (0, 1) else 2), "g")
        purity.append(m["class_metrics"]["class_purity"])
    # purity grows with the scale: about the smallest class share at 0, near 1 from 1 on
    assert purity[0] < 0.3 < 0.98 < purity[1] <= purity[2] + 0.01
    import matplotlib.image

    img = matplotlib.image.imread(sweep / "report_guidance.png")
    assert img.ndim == 3 and img.shape[0] > 100


# ---------------------------------------------------------------- the checkpoint source
def _train(run_dir, *extra):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        base = [o for o in TINY_TRAIN if "model=unet" not in extra or not o.startswith("model.")]  # MLP sizes
        cfg = compose(config_name="config", overrides=[*base, *extra])
    GlobalHydra.instance().clear()
    train(cfg, str(run_dir))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny real training runs on the ring: a class-conditional model (model.num_classes=8) and an
    unconditional one."""
    root = tmp_path_factory.mktemp("guidance_runs")
    return {"conditional": _train(root / "conditional", "model.num_classes=8"),
            "unconditional": _train(root / "unconditional")}


def test_checkpoint_cfg_and_plain_conditional_sampling(tmp_path, runs):
    ckpt = runs["conditional"]
    trained = load_trained(str(ckpt), device="cpu", ema=True)
    assert trained.model.num_classes == 8
    common = ["source=checkpoint", f"checkpoint={ckpt}", "sampler=dpm_solver", "sampler.nfe=5", "num_samples=64",
              "seed=3", "plot=false"]
    samples, labels, m = _run(tmp_path / "cfg", *common, "guidance.kind=cfg", "guidance.scale=2")
    assert torch.equal(labels, class_labels(None, 8, 64))
    guided = classifier_free(trained.model, labels, 2.0)
    torch.testing.assert_close(samples, _direct(trained.sde, guided, 64, "dpm_solver", 5, 3))
    assert m["batch_cost"] == 2 and m["score_calls"] == m["nfe_spent"] and m["batch_equivalent_nfe"] == 2 * m["nfe_spent"]
    # ring2d data carry their oracle: the class metrics of the saved samples
    assert m["class_metrics"] == _recomputed_class_metrics(samples, labels)
    # label + guidance.kind=none: the model's own conditional score at that label (no guidance code)
    plain, plain_labels, m_plain = _run(tmp_path / "plain", *common, "label=4")
    assert torch.equal(plain_labels, torch.full((64,), 4))

    def at_label_4(x, t):
        return trained.model(x, t, torch.full((x.shape[0],), 4, dtype=torch.long))

    torch.testing.assert_close(plain, _direct(trained.sde, at_label_4, 64, "dpm_solver", 5, 3))
    assert m_plain["batch_cost"] == 1 and m_plain["guidance"] == {"kind": "none", "scale": 1.0}


def test_checkpoint_classifier_guidance_goes_through_the_one_loader(tmp_path, runs, monkeypatch):
    ckpt = runs["unconditional"]
    trained = load_trained(str(ckpt), device="cpu", ema=True)
    exact = trained.dataset.oracle.classifier(trained.sde)  # a perfect classifier of the run's data
    calls = []

    def loader(path, device, ema):
        calls.append(path)
        return exact, trained.sde

    monkeypatch.setattr(sample_app, "_load_classifier", loader)
    samples, labels, m = _run(tmp_path, "source=checkpoint", f"checkpoint={ckpt}", "guidance.kind=classifier",
                              "classifier=my/classifier_run", "guidance.scale=3", "label=[2,6]", "num_samples=40",
                              "sampler.nfe=6", "seed=1", "plot=false")
    assert calls == ["my/classifier_run"]
    guided = classifier_guided(trained.model, exact, labels, 3.0)
    torch.testing.assert_close(samples, _direct(trained.sde, guided, 40, nfe=6, seed=1))
    assert m["label_counts"] == {"2": 20, "6": 20} and m["batch_cost"] == 1


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing sampled
class _FakeClassifier(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x, t):
        return torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)


ORACLE_BAD = [
    (["label=8"], "label must lie in [0, 8)"),
    (["problem=gaussian16d", "label=1"], "label must lie in [0, 1)"),
    (["label=abc"], "label must be null (every class, equal shares), a class index >= 0"),
    (["label=-1"], "label must be null"),
    (["label=[2,2]"], "label must list each class at most once"),
    (["guidance.kind=strong"], "guidance.kind must be one of ['none', 'cfg', 'classifier']"),
    (["guidance.scale=4"], "guidance.scale applies to guidance.kind=cfg or classifier"),
    (["guidance.kind=cfg", "guidance.scale=inf"], "guidance.scale must be a finite real number"),
    (["guidance.kind=cfg", "classifier=run"], "classifier is used only with guidance.kind=classifier"),
]


def _fails_in_one_line(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sampled = []
    monkeypatch.setattr(sample_app, "timed_sample", lambda *a, **k: sampled.append(1))
    with pytest.raises(SystemExit) as exit_info:
        sample_main([*argv, f"hydra.run.dir={tmp_path}", "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and expected in err[0], err
    assert not sampled and not (tmp_path / "samples.pt").exists()


@pytest.mark.parametrize("argv, expected", ORACLE_BAD, ids=[" ".join(a) for a, _ in ORACLE_BAD])
def test_bad_oracle_options_fail_in_one_line_before_sampling(tmp_path, capsys, monkeypatch, argv, expected):
    _fails_in_one_line(tmp_path, capsys, monkeypatch, ["problem=ring2d", *argv], expected)


CHECKPOINT_BAD = [
    ("unconditional", ["label=2"], "label=2 with guidance.kind=none needs a class-conditional model", None),
    ("unconditional", ["guidance.kind=cfg"], "guidance.kind=cfg needs a class-conditional model", None),
    ("conditional", ["label=8"], "label must lie in [0, 8)", None),
    ("unconditional", ["guidance.kind=classifier"], "classifier must name a classifier run", None),
    ("unconditional", ["guidance.kind=classifier", "classifier=c"], "has 3 classes but", (3, VPSDE())),
    ("unconditional", ["guidance.kind=classifier", "classifier=c"], "was trained under another SDE", (8, VESDE())),
]


@pytest.mark.parametrize("which, argv, expected, classifier", CHECKPOINT_BAD, ids=[e for _, _, e, _ in CHECKPOINT_BAD])
def test_bad_checkpoint_options_fail_in_one_line_before_sampling(tmp_path, capsys, monkeypatch, runs, which, argv,
                                                                  expected, classifier):
    if classifier is not None:
        monkeypatch.setattr(sample_app, "_load_classifier", lambda path, device, ema: (_FakeClassifier(classifier[0]), classifier[1]))
    _fails_in_one_line(tmp_path, capsys, monkeypatch,
                       ["source=checkpoint", f"checkpoint={runs[which]}", *argv], expected)


def test_oracle_with_a_classifier_of_another_class_count_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sample_app, "_load_classifier", lambda path, device, ema: (_FakeClassifier(4), VPSDE()))
    _fails_in_one_line(tmp_path, capsys, monkeypatch,
                       ["problem=ring2d", "guidance.kind=classifier", "classifier=c"], "has 4 classes but ring2d has 8")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def test_bad_input_as_a_user_starts_it(tmp_path):
    """The console script from a fresh working directory (the in-process cases above run the same
    `hydra_app` error path)."""
    proc = subprocess.run([str(BIN / "sde-gen-sample"), "problem=ring2d", "label=9", "device=cpu",
                           f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("sde-gen-sample: error: ") and "label must lie in [0, 8) (8 classes); got 9" in err[0]
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "samples.pt").exists()


# ---------------------------------------------------------------- pictures: one row per class
@pytest.mark.parametrize("channels", [1, 3])
def test_class_image_grid_puts_each_class_on_its_own_row(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(13, channels, 4, 5, generator=g) * 2 - 1
    labels = torch.tensor([2, 0, 2, 2, 7, 0, 2, 2, 7, 2, 2, 2, 2])
    grid, classes = class_image_grid(x, labels, per_class=4)
    assert classes == [0, 2, 7]
    H, W = 4, 5
    assert grid.shape[:2] == (3 * (H + 1), 4 * (W + 1))
    cells = grid if channels == 3 else grid[..., None]
    for r, c in enumerate(classes):
        mine = x[labels == c][:4]
        for j in range(4):
            cell = cells[r * (H + 1): r * (H + 1) + H, j * (W + 1): j * (W + 1) + W]
            if j < mine.shape[0]:  # the class's j-th image, mapped from [-1, 1] to [0, 1]
                torch.testing.assert_close(cell, ((mine[j] + 1) / 2).permute(1, 2, 0))
            else:  # fewer images than cells: the gap colour
                assert torch.all(cell == GRID_GAP)
    # the gaps between rows
    assert torch.all(cells[H::H + 1] == GRID_GAP)


def test_image_grid_cols_and_class_picture(tmp_path):
    x = torch.zeros(5, 1, 3, 3)
    assert image_grid(x, cols=2).shape == (3 * 4, 2 * 4) and image_grid(x, cols=7).shape == (4, 7 * 4)
    with pytest.raises(ValueError, match="cols must be an integer >= 1"):
        image_grid(x, cols=0)
    with pytest.raises(ValueError, match="labels must have shape"):
        class_image_grid(x, torch.zeros(4, dtype=torch.long))
    save_picture(str(tmp_path / "img.png"), torch.rand(12, 1, 8, 8), title="t", labels=torch.arange(12) % 3)
    save_picture(str(tmp_path / "pts.png"), torch.randn(50, 5), torch.randn(40, 5), "t",
                 labels=torch.arange(50) % 4, reference_labels=torch.arange(40) % 4)
    assert (tmp_path / "img.png").stat().st_size > 1000 and (tmp_path / "pts.png").stat().st_size > 1000


@pytest.mark.slow
def test_image_checkpoint_draws_one_row_per_class(tmp_path, monkeypatch):
    """A class-conditional U-Net on the 8x8 digits (one training step): the app's picture is the
    class grid of the samples it saved, rows in class order."""
    run = _train(tmp_path / "digits", "model=unet", "data=digits", "model.channels=8", "model.channel_mult=[1]",
                 "model.attention_resolutions=[]", "model.num_classes=10")
    drawn = []
    real = sample_app.save_picture

    def spy(path, samples, reference, title, **kw):
        drawn.append((samples.clone(), kw))
        real(path, samples, reference, title, **kw)

    monkeypatch.setattr(sample_app, "save_picture", spy)
    samples, labels, m = _run(tmp_path / "out", "source=checkpoint", f"checkpoint={run}", "label=[7,3]",
                              "num_samples=9", "sampler=dpm_solver", "sampler.nfe=3")
    assert samples.shape == (9, 1, 8, 8) and labels.tolist() == [7] * 5 + [3] * 4
    assert "class_metrics" not in m and m["label_counts"] == {"3": 4, "7": 5}  # no oracle for images
    (x, kw), = drawn
    torch.testing.assert_close(x, samples)
    assert torch.equal(kw["labels"], labels) and kw["reference_labels"] is None
    grid, classes = class_image_grid(samples, labels, per_class=5, per_image_range=True)
    assert classes == [3, 7] and grid.shape == (2 * 9, 5 * 9)
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000


def test_report_skips_garbled_class_metrics_and_keeps_old_runs(tmp_path, capsys):
    """A run whose class metrics are garbled is named and skipped; a run written before labels
    existed (no guidance key) stays in the sampler table and out of the guidance table."""
    sample_main(["problem=ring2d", "label=2", "num_samples=50", "sampler=dpm_solver", "sampler.nfe=4", "plot=false",
                 f"hydra.run.dir={tmp_path / 'good'}", *SMALL])
    good = json.loads((tmp_path / "good" / "metrics.json").read_text())
    bad = json.loads(json.dumps(good))
    bad["class_metrics"]["per_class"]["2"]["sw2_ratio"] = "big"
    old = {k: v for k, v in good.items() if k not in ("class_metrics", "guidance", "label", "label_counts")}
    for name, m in (("bad", bad), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and os.path.join(str(tmp_path), "bad", "metrics.json") in err and "sw2_ratio" in err
    text = (tmp_path / "report.md").read_text()
    rows = _table(text, "problem")
    assert [r["run"] for r in rows] == ["`good`"]
    assert rows[0]["label"] == "2" and rows[0]["guidance"] == "none"
    assert rows[0]["class purity"] == format(good["class_metrics"]["class_purity"], ".4f")
    assert "`old`" in text.split("# Guidance report")[0] and "`bad`" not in text
