"""Training: the DSM loss against its analytic minimum, a short training run against the oracle
score, exact resume, checkpoint safety, every config composing, the Hydra app end to end, and
start-up errors for bad values."""
import importlib.util
import math
import os
import re
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sde_gen import GaussianMixture, VPSDE, dsm_loss, make_preset
from sde_gen.checkpoint import CheckpointError, load_checkpoint, load_trained, save_checkpoint
from sde_gen.config import ConfigError, instantiate, register_configs, validate
from sde_gen.data import Dataset
from sde_gen.diagnostics import score_error_vs_t
from sde_gen.nets import MLP, ScoreModel
from sde_gen.samplers import Sampler
from sde_gen.sdes import SDE
from sde_gen.config import CONF_DIR
from sde_gen.config import TrainConf
from sde_gen.losses import LOSSES, DenoisingScoreMatching
from sde_gen.nets import NoiseConditionalClassifier, build_classifier, build_score_model, model_kind
from sde_gen.training import train
from sde_gen.discrete import DiscreteProcess, DiscreteSampler, TokenTransformer, UniformProcess
from sde_gen.discrete.losses import DISCRETE_LOSSES
from sde_gen.discrete.nets import build_discrete_model

#: the experiments of discrete diffusion (issue 16): a token_transformer, not the MLP of TINY
DISCRETE_EXPERIMENTS = ("d3pm_digits_uniform", "d3pm_digits_absorbing", "maskgit_digits", "d3pm_markov")

from .conftest import ALL_SDES, SDE_IDS
from .test_image_experiments import FILE_DATA_EXPERIMENTS

CONF = pathlib.Path(CONF_DIR)
REPO = CONF.parents[1]

# a model and evaluation small enough for a few-step run in well under a second
TINY = [
    "model.hidden=16", "model.depth=1", "model.time_embed_dim=8",
    "train.batch_size=32", "lr_scheduler.warmup=2", "train.eval_samples=64", "train.eval_projections=16",
    "train.noise_floor_replicates=2", "train.score_error_samples=32", "train.progress=false",
    "train.plots=false", "train.log_every=1", "sampler.nfe=4", "device=cpu",
]


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


def _compose(*overrides):
    return compose(config_name="config", overrides=list(overrides))


# ---------------------------------------------------------------- the loss and the trained score
@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_dsm_loss_of_exact_score_equals_analytic_minimum(sde):
    """For Gaussian data N(m, C) the DSM loss at time t is minimised by the true score, with value
    a^2 / (2 s^2) tr Cov(x0 | x_t), Cov(x0 | x_t) = (C^-1 + a^2 / s^2 I)^-1 (Gaussian conditioning)."""
    C = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    data = GaussianMixture.gaussian(torch.tensor([0.3, -1.0], dtype=torch.float64), C)
    g = torch.Generator().manual_seed(0)
    n = 40000
    for frac in (0.02, 0.3, 1.0):
        t_val = sde.eps + frac * (sde.T - sde.eps)
        t = torch.full((n,), t_val, dtype=torch.float64)
        x0 = data.sample(n, g, dtype=torch.float64)
        losses = dsm_loss(data.score_fn(sde), sde, x0, "sigma2", reduction="sum", generator=g, t=t)
        a, s = (float(c) for c in sde.marginal_coeffs(t[:1]))
        post = torch.linalg.inv(torch.linalg.inv(C) + a ** 2 / s ** 2 * torch.eye(2, dtype=torch.float64))
        expected = a ** 2 / (2 * s ** 2) * float(torch.trace(post))
        tol = 5 * float(losses.std()) / n ** 0.5
        assert abs(float(losses.mean()) - expected) < tol, (t_val, float(losses.mean()), expected, tol)


def test_short_training_beats_untrained_score_error():
    torch.manual_seed(0)
    sde, oracle = VPSDE(), make_preset("ring2d")
    model = ScoreModel(MLP(2, hidden=64, depth=2, time_embed_dim=32), sde, data_std=1.4)
    g_eval = torch.Generator().manual_seed(1)
    before = score_error_vs_t(model, sde, oracle, n=512, generator=g_eval)["error"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = dsm_loss(model, sde, oracle.sample(128, g, dtype=torch.float32), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = score_error_vs_t(model, sde, oracle, n=512, generator=torch.Generator().manual_seed(1))["error"]
    assert float(after.mean()) < 0.25 * float(before.mean()), (after, before)


# ---------------------------------------------------------------- resume and checkpoints
def test_resume_gives_identical_parameters(hydra_ctx, tmp_path):
    # the run is "stopped" by a shorter train.steps; the cosine decay depends on train.steps, so the
    # constant schedule is used here (an interrupted run keeps its config and its schedule)
    base = TINY + ["train.eval_every=4", "train.checkpoint_every=100", "lr_scheduler=constant"]
    straight = train(_compose(*base, "train.steps=10"), str(tmp_path / "a"))
    train(_compose(*base, "train.steps=5"), str(tmp_path / "b"))
    resumed = train(_compose(*base, "train.steps=10", "train.resume=auto"), str(tmp_path / "b"))
    for name, p in straight["model"].state_dict().items():
        assert torch.equal(p, resumed["model"].state_dict()[name]), name
    for name, p in straight["ema"].state_dict().items():
        assert torch.equal(p, resumed["ema"].state_dict()[name]), name
    # and the same loss log, step by step (wall-clock rates live apart, in timing.csv)
    a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "ckpt_0000010.pt"))["metrics"]["loss"]
    b = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "ckpt_0000010.pt"))["metrics"]["loss"]
    assert a == b and len(a) == 10
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()
    assert (tmp_path / "a" / "loss.csv").read_text().splitlines()[0] == "step,loss,lr,skipped"


def test_corrupt_checkpoint_is_reported_and_never_replaces_a_good_one(hydra_ctx, tmp_path, monkeypatch):
    out = train(_compose(*TINY, "train.steps=3"), str(tmp_path))
    good = tmp_path / "checkpoints" / "ckpt_0000003.pt"
    state = load_checkpoint(str(good))
    assert state["step"] == 3 and state["config"]["train"]["steps"] == 3
    # truncated and garbage files: a clear error naming the file
    raw = good.read_bytes()
    for bad_bytes in (raw[: len(raw) // 2], b"not a checkpoint"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(bad_bytes)
        with pytest.raises(CheckpointError, match="bad.pt"):
            load_checkpoint(str(bad))
        with pytest.raises(CheckpointError, match="bad.pt"):
            load_trained(str(bad))
    # a write that produces a broken file fails and leaves the good checkpoint untouched
    import sde_gen.checkpoint as ck

    def broken_save(obj, fh):  # save_checkpoint hands torch.save an open file (so a write error keeps its errno)
        fh.write(b"PK\x03\x04 half a zip")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(CheckpointError):
        save_checkpoint(str(good), dict(state, step=99))
    monkeypatch.undo()
    assert good.read_bytes() == raw
    assert not [p for p in os.listdir(good.parent) if p.endswith(".tmp")]
    # the run directory loads back into a score model equal to the EMA network
    trained = load_trained(str(tmp_path))
    assert trained.step == 3 and not trained.model.training
    x, t = torch.randn(5, 2), torch.rand(5) * 0.9 + 0.05
    torch.testing.assert_close(trained.model(x, t), out["ema"].module(x, t))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_trained(str(tmp_path / "empty"))


# ---------------------------------------------------------------- configs
def _group_options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_option_of_every_group_composes_and_instantiates(hydra_ctx, tmp_path):
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir())
    assert {"sde", "model", "data", "train", "loss", "optimizer", "lr_scheduler", "logger", "sampler", "experiment"} <= set(groups)
    for group in groups:
        for option in _group_options(group):
            cfg = _compose(f"{group}={option}")
            if group == "sde":  # the group also holds discrete diffusion's processes (d3pm_*)
                assert isinstance(instantiate(cfg.sde, "sde"), (SDE, DiscreteProcess))
            elif group == "sampler":
                assert isinstance(instantiate(cfg.sampler, "sampler"), (Sampler, DiscreteSampler))
            elif group == "train":
                assert isinstance(validate(cfg.train, TrainConf, "train"), TrainConf)
            elif group == "loss":
                assert isinstance(instantiate(cfg.loss, "loss"), (*LOSSES.values(), *DISCRETE_LOSSES.values()))
            elif group in ("optimizer", "lr_scheduler"):
                opt = instantiate(cfg.optimizer, "optimizer")([torch.nn.Parameter(torch.zeros(2))])
                assert isinstance(opt, torch.optim.Optimizer)
                if group == "lr_scheduler":
                    assert isinstance(instantiate(cfg.lr_scheduler, "lr_scheduler")(opt), torch.optim.lr_scheduler.LRScheduler)
            elif group == "logger":
                assert hasattr(instantiate(cfg.logger, "logger", run_dir=str(tmp_path)), "log_eval")
            elif group == "model":
                if option.startswith("ddpmpp"):  # 32x32 images (attention at 16x16); the 62M network on meta
                    with torch.device("meta"):
                        assert isinstance(build_score_model(cfg.model, VPSDE(), (3, 32, 32)), ScoreModel)
                    continue
                if option == "diffusers_unet" and importlib.util.find_spec("diffusers") is None:
                    continue  # the optional interop extra; tests/test_interop.py covers it
                shape = (1, 8, 8) if "unet" in option else (2,)
                if model_kind(cfg.model) == "classifier":  # num_classes: auto takes the data's count
                    assert isinstance(build_classifier(cfg.model, VPSDE(), shape, num_classes=3), NoiseConditionalClassifier)
                elif model_kind(cfg.model) == "discrete":
                    assert isinstance(build_discrete_model(cfg.model, UniformProcess(3, 8), shape), TokenTransformer)
                else:
                    assert isinstance(build_score_model(cfg.model, VPSDE(), shape), ScoreModel)
            elif group == "data":
                if "data_dir" in cfg.data:  # file-based: without files (or their folder), the error names them
                    with pytest.raises(ConfigError, match="missing file|does not exist"):
                        instantiate(cfg.data, "data")
                else:
                    assert isinstance(instantiate(cfg.data, "data"), Dataset)
            elif group == "experiment":
                if option in FILE_DATA_EXPERIMENTS:  # no files here: tests/test_image_experiments.py trains them
                    continue
                data, sde = instantiate(cfg.data, "data"), instantiate(cfg.sde, "sde")
                if model_kind(cfg.model) == "discrete":
                    assert isinstance(build_discrete_model(cfg.model, sde, data.event_shape), TokenTransformer)
                elif model_kind(cfg.model) == "classifier":
                    net = build_classifier(cfg.model, sde, data.event_shape, num_classes=data.num_classes)
                    assert isinstance(net, NoiseConditionalClassifier)
                else:
                    net = build_score_model(cfg.model, sde, data.event_shape, num_classes=data.num_classes)
                    assert isinstance(net, ScoreModel)


@pytest.mark.parametrize("experiment", [None] + [e for e in _group_options("experiment")
                                        if e not in FILE_DATA_EXPERIMENTS and e != "none"])
def test_two_step_run_of_default_and_each_experiment(hydra_ctx, tmp_path, experiment):
    over = ([f"experiment={experiment}"] if experiment else []) + TINY + ["train.steps=2", "train.plots=true"]
    if experiment in ("digits", "conditional_digits", "classifier_digits", "edm_digits"):  # keep the U-Net tiny
        over = [o for o in over if not o.startswith("model.")] + ["model.channels=8"]
    if experiment in DISCRETE_EXPERIMENTS:  # a tiny transformer, few diffusion steps
        over = [o for o in over if not o.startswith("model.")] + ["model.width=8", "model.depth=1", "model.heads=2",
                                                                  "sde.num_timesteps=8"]
    out = train(_compose(*over), str(tmp_path))
    assert out["step"] == 2
    names = set(os.listdir(tmp_path))
    if experiment is not None and experiment.startswith("classifier"):  # accuracies, no samples
        assert {"checkpoints", "metrics.csv", "loss.csv", "timing.csv", "loss.png"} <= names
        assert 0 <= out["final"]["acc_small_t"] <= 1
        return
    assert {"checkpoints", "metrics.csv", "loss.csv", "timing.csv", "samples.png", "loss.png"} <= names
    if experiment in DISCRETE_EXPERIMENTS:  # token samples and a bound in bits/dim, no sliced W2
        assert 0 <= out["final"]["marginal_tv"] <= 1 and out["final"]["bits_per_dim"] > 0
        return
    assert torch.isfinite(torch.tensor(out["final"]["sw2"]))


@pytest.mark.parametrize(
    "override, field",
    [
        ("optimizer.lr=-1", "optimizer: lr"), ("optimizer.betas=[0.9,1.0]", "optimizer: betas"),
        ("optimizer.eps=0", "optimizer: eps"), ("optimizer=adamw optimizer.weight_decay=-1", "optimizer: weight_decay"),
        ("train.batch_size=0", "batch_size"), ("train.steps=0", "steps"),
        ("lr_scheduler.warmup=-1", "lr_scheduler: warmup"), ("lr_scheduler.decay=linear", r"lr_scheduler: decay must be one of \['cosine', 'constant'\]"),
        ("train.grad_clip=0", "grad_clip"), ("train.ema_decay=1.0", "ema_decay"),
        ("train.checkpoint_every=0", "checkpoint_every"), ("train.eval_every=0", "eval_every"),
        ("train.max_bad_steps=0", "max_bad_steps"),
        ("loss.weighting=l2", r"loss: weighting must be one of \['sigma2', 'likelihood', 'none', 'edm'\]; got 'l2'"),
        ("loss.importance_sampling=true", "loss: importance_sampling"), ("loss.reduction=avg", "loss: reduction"),
        ("logger=tensorboard logger.log_dir=", "logger: log_dir"),
        ("sde.eps=2", "eps"), ("model.hidden=0", "hidden"), ("sampler.nfe=0", "nfe"),
        ("data.num_test=0", "num_test"), ("device=gpu0", "device"), ("seed=-1", "seed"),
        ("train.resume=/nonexistent/run", "resume"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_field(hydra_ctx, tmp_path, override, field):
    with pytest.raises(ConfigError, match=field) as info:
        train(_compose(*TINY, *override.split()), str(tmp_path / "run"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # failed before any work


@pytest.mark.parametrize("override, field", [("train.lrr=1", "lrr"), ("model.hiden=3", "hiden"), ("optimizer.lr=abc", "lr"),
                                             ("loss.weightin=none", "weightin"), ("train.lr=1e-3", "lr"),
                                             ("data.num_tst=3", "num_tst")])
def test_misspelt_keys_and_wrong_types_fail_at_composition(hydra_ctx, override, field):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    assert field in str(info.value) + str(info.value.__cause__)


# ---------------------------------------------------------------- the real app, in a subprocess
def _app(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    flags = [a for a in args if a.startswith("-")]  # argparse wants the flags before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "sde_gen.train", *flags, *TINY, "train.steps=2", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_hydra_app_multirun_of_the_default_run(tmp_path):
    """One subprocess: `python -m sde_gen.train -m sde=vp,ve ...`; run 0 is the default config.

    No hydra.sweep.dir: the jobs land in the shared layout multirun/train/<date>_<time>/<n>_<overrides>.
    """
    proc = _app(tmp_path, "-m", "sde=vp,ve", "train.plots=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "train").iterdir()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", sweep.name), sweep.name
    runs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    # <n>_<the job's overrides> (TINY's too, sorted by Hydra, cut to 120 characters with a hash)
    assert [r.name.split("_")[0] for r in runs] == ["0", "1"]
    assert ",sde=vp," in runs[0].name and ",sde=ve," in runs[1].name
    sdes = [OmegaConf.load(r / ".hydra" / "config.yaml").sde._target_ for r in runs]
    assert sdes == ["sde_gen.sdes.VPSDE", "sde_gen.sdes.VESDE"]
    for run in runs:
        assert (run / "checkpoints" / "ckpt_0000002.pt").is_file() and (run / "samples.png").is_file()
        assert "sw2" in (run / "metrics.csv").read_text().splitlines()[0]
    cfg = load_trained(str(runs[0])).config
    assert cfg["data"]["_target_"].endswith("Ring2D") and cfg["model"]["_target_"].endswith("MLP")


def _closed_form_lr(lr, warmup, steps, decay, step):
    """The schedule as the training loop computed it before the scheduler node, written out here:
    the scheduler must reproduce it to the last bit (else the default run's metrics change)."""
    out = lr * min(1.0, (step + 1) / (warmup + 1))
    if decay == "cosine" and step >= warmup:
        progress = (step - warmup) / max(1, steps - warmup)
        out *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return out


def _adam(lr=2e-3):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr)


@pytest.mark.parametrize("decay", ["cosine", "constant"])
@pytest.mark.parametrize("warmup, steps", [(0, 300), (200, 6000), (50, 50), (7, 8), (40, 10), (0, 1)])
def test_warmup_scheduler_equals_the_closed_form_bit_for_bit(decay, warmup, steps):
    from sde_gen.optim import WarmupLR

    lr = 2e-3
    opt = _adam(lr)
    sched = WarmupLR(opt, warmup=warmup, total_steps=steps, decay=decay)
    got = []
    for _ in range(steps + 3):  # past the end as well
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [_closed_form_lr(lr, warmup, steps, "cosine" if decay == "cosine" else "none", s) for s in range(steps + 3)]
    assert got == want  # exact: no approx
    assert got[0] == lr / (warmup + 1)
    if decay == "cosine" and steps > warmup:
        assert got[steps] == 0.0 and got[warmup] == lr


@pytest.mark.parametrize("new_steps", [120, 200])
def test_scheduler_resume_in_the_middle_continues_the_closed_form(tmp_path, new_steps):
    """Saved at step 37 (inside the cosine), loaded through torch.load(weights_only=True) into a
    fresh optimiser + scheduler: the rates go on as the closed form of the *current* config says
    (the same total steps, or a run extended to more steps, as before the scheduler node)."""
    from sde_gen.optim import WarmupLR

    opt = _adam()
    sched = WarmupLR(opt, warmup=10, total_steps=120)
    for _ in range(37):
        opt.step()
        sched.step()
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = _adam()
    sched2 = WarmupLR(opt2, warmup=10, total_steps=new_steps)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["lr_scheduler"])
    got = []
    for _ in range(37, new_steps + 1):
        got.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert got == [_closed_form_lr(2e-3, 10, new_steps, "cosine", s) for s in range(37, new_steps + 1)]


def test_scheduler_options_are_checked():
    from sde_gen.optim import WarmupLR

    for kwargs, field in [({"warmup": -1}, "warmup"), ({"total_steps": 0}, "total_steps"), ({"decay": "linear"}, "decay")]:
        with pytest.raises(ValueError, match=field):
            WarmupLR(_adam(), **kwargs)


def test_the_loss_options_are_checked_once_not_per_step(monkeypatch):
    import sde_gen.losses as losses

    calls = []
    real = losses._check_options
    monkeypatch.setattr(losses, "_check_options", lambda *a: (calls.append(a), real(*a)))
    loss = DenoisingScoreMatching("likelihood", importance_sampling=True)
    sde, x0, g = VPSDE(), torch.randn(8, 2), torch.Generator().manual_seed(0)
    for _ in range(3):
        loss(lambda x, t: -x, sde, x0, g)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="weighting must be one of"):  # the functional form still checks
        dsm_loss(lambda x, t: -x, sde, x0, weighting="l2")


def test_loss_csv_is_written_as_training_goes(hydra_ctx, tmp_path, monkeypatch):
    seen = []
    forward = DenoisingScoreMatching.forward

    def spy(self, *args, **kwargs):
        path = tmp_path / "loss.csv"
        seen.append(len(path.read_text().splitlines()) - 1 if path.exists() else 0)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DenoisingScoreMatching, "forward", spy)
    train(_compose(*TINY, "train.steps=4"), str(tmp_path))
    assert seen == [0, 1, 2, 3]  # log_every=1: a row on disk after every step, before the next


def test_tensorboard_logger_without_the_package_warns_once_and_writes_csv(hydra_ctx, tmp_path, monkeypatch, caplog):
    import sde_gen.loggers as loggers

    try:
        import torch.utils.tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    monkeypatch.setattr(loggers, "_WARNED", False)
    with caplog.at_level("WARNING", logger="sde_gen.loggers"):
        train(_compose(*TINY, "train.steps=2", "logger=tensorboard"), str(tmp_path / "a"))
        loggers.TensorBoardLogger(str(tmp_path / "b"))
    lines = [r.getMessage() for r in caplog.records if r.name == "sde_gen.loggers"]
    assert len(lines) == 1 and "tensorboard" in lines[0] and "\n" not in lines[0]
    assert (tmp_path / "a" / "loss.csv").is_file() and (tmp_path / "a" / "metrics.csv").is_file()
    assert not (tmp_path / "a" / "tb").exists()


def test_stored_training_nodes_pass_the_checkpoint_check_and_others_do_not(hydra_ctx, tmp_path):
    from sde_gen.checkpoint import check_checkpoint_config
    from sde_gen.config import to_plain

    cfg = to_plain(_compose("optimizer=adamw", "logger=tensorboard"))
    check_checkpoint_config(cfg)  # _target_ and _partial_ of every training node are allowed
    for section, key, value in [("optimizer", "_target_", "torch.optim.SGD"), ("loss", "_target_", "os.system"),
                                ("logger", "_target_", "sde_gen.optim.WarmupLR"), ("loss", "_partial_", True),
                                ("optimizer", "_partial_", False), ("optimizer", "_recursive_", False),
                                ("logger", "_partial_", True)]:
        bad = to_plain(_compose())
        bad[section][key] = value
        with pytest.raises(CheckpointError, match=rf"^config\.{section}\.{key}:"):
            check_checkpoint_config(bad)


def test_train_state_round_trip_and_old_checkpoints_without_a_scheduler(hydra_ctx, tmp_path):
    """A checkpoint holds TrainState.state_dict(); one written before the scheduler was stored
    resumes with the scheduler at the checkpoint's step."""
    base = TINY + ["train.eval_every=100", "train.checkpoint_every=3", "train.keep_checkpoints=5"]
    straight = train(_compose(*base, "train.steps=6"), str(tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "ckpt_0000003.pt"
    state = load_checkpoint(str(ckpt))
    assert state["lr_scheduler"]["last_epoch"] == 3
    del state["lr_scheduler"]
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    save_checkpoint(str(tmp_path / "b" / "checkpoints" / "ckpt_0000003.pt"), state)
    resumed = train(_compose(*base, "train.steps=6", "train.resume=auto"), str(tmp_path / "b"))
    for k, v in straight["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()