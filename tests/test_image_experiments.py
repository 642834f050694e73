"""The image experiments (issue 13): `experiment=cifar10_ddpmpp` (VP), `cifar10_ncsnpp` (VE) and `mnist`
compose with score_sde_pytorch's hyper-parameters (Song et al. 2021, App. H; the values are the
specification, listed in docs/gpu.md), build the reference-size network, and each trains 2 steps
through the real training loop on synthetic files in its dataset's layout (tiny model overrides)."""
import pathlib
import pickle
import struct

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from sde_gen.checkpoint import load_checkpoint, load_trained
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.nets import DDPMpp, build_score_model
from sde_gen.sdes import VESDE, VPSDE
from sde_gen.training import train

from .test_ddpmpp import count_ddpmpp

#: the experiments whose data are files (trained here on synthetic files; test_train.py's generic
#: two-step test covers the others)
FILE_DATA_EXPERIMENTS = ("cifar10_ddpmpp", "cifar10_ncsnpp", "mnist")

TINY_NET = ["model.channels=8", "model.num_res_blocks=1", "model.channel_mult=[1,2]", "model.dropout=0.0"]
TINY_RUN = ["train.steps=2", "train.batch_size=4", "train.eval_every=100", "train.eval_samples=4",
            "train.eval_projections=4", "train.progress=false", "train.plots=false", "train.log_every=1",
            "lr_scheduler.warmup=1", "device=cpu"]


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        yield


def _compose(*overrides):
    return compose(config_name="config", overrides=list(overrides))


def test_the_file_data_experiments_are_exactly_these():
    # a new experiment on file data must be added here (and so be trained on synthetic files)
    conf = pathlib.Path(CONF_DIR)
    on_files = sorted(p.stem for p in (conf / "experiment").glob("*.yaml")
                      if any(f"override /data: {d}" in p.read_text() for d in ("cifar10", "mnist", "image_folder")))
    assert on_files == sorted(FILE_DATA_EXPERIMENTS)


@pytest.mark.parametrize("experiment, sde_cls, ema, reduction, sampler", [
    ("cifar10_ddpmpp", VPSDE, 0.9999, "mean", "EulerMaruyama"),
    ("cifar10_ncsnpp", VESDE, 0.999, "sum", "PredictorCorrector"),
])
def test_cifar10_experiments_compose_with_score_sde_hyper_parameters(hydra_ctx, experiment, sde_cls, ema, reduction,
                                                                       sampler):
    cfg = _compose(f"experiment={experiment}")
    tr, opt = cfg.train, cfg.optimizer
    assert (tr.steps, tr.batch_size, tr.grad_clip, tr.ema_decay) == (1_300_000, 128, 1.0, ema)
    assert (opt.lr, list(opt.betas), opt.eps, opt.weight_decay) == (2e-4, [0.9, 0.999], 1e-8, 0.0)
    assert cfg.lr_scheduler.warmup == 5000 and cfg.lr_scheduler.decay == "constant"
    assert cfg.loss.weighting == "sigma2" and cfg.loss.reduction == reduction
    assert cfg.data._target_.endswith("CIFAR10") and cfg.data.hflip is True
    m = cfg.model
    assert (m.channels, list(m.channel_mult), m.num_res_blocks, list(m.attention_resolutions), m.dropout) == \
        (128, [1, 2, 2, 2], 4, [16], 0.1)
    assert cfg.sampler._target_.endswith(sampler)
    sde = instantiate_sde(cfg)
    assert isinstance(sde, sde_cls)
    if sde_cls is VESDE:
        assert (sde.sigma_min, sde.sigma_max) == (0.01, 50.0) and m.embedding == "fourier"
        assert cfg.sampler.corrector.snr == 0.16 and cfg.sampler.nfe == 2000  # 1000 predictor + 1000 corrector
    else:
        assert (sde.beta_min, sde.beta_max) == (0.1, 20.0) and m.embedding == "positional" and cfg.sampler.nfe == 1000
    with torch.device("meta"):  # the reference network from the config, without allocating it
        net = build_score_model(cfg.model, sde, (3, 32, 32))
    assert isinstance(net.backbone, DDPMpp)
    assert sum(p.numel() for p in net.parameters()) == count_ddpmpp(3, 32, 128, (1, 2, 2, 2), 4, {16})


def instantiate_sde(cfg):
    from sde_gen.config import instantiate

    return instantiate(cfg.sde, "sde")


def test_mnist_experiment_composes_between_digits_and_cifar(hydra_ctx):
    cfg = _compose("experiment=mnist")
    assert cfg.data._target_.endswith("MNIST") and cfg.model._target_.endswith("DDPMpp")
    assert list(cfg.model.attention_resolutions) == [14]  # a resolution of 28x28 with channel_mult [1, 2, 2]
    with torch.device("meta"):
        net = build_score_model(cfg.model, VPSDE(), (1, 28, 28))
    assert sum(p.numel() for p in net.parameters()) == count_ddpmpp(1, 28, 64, (1, 2, 2), 2, {14})


# ---------------------------------------------------------------- synthetic files, two steps each
def _write_cifar_py(folder: pathlib.Path, rng, n=4):
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        img = rng.integers(0, 256, size=(n, 3 * 32 * 32)).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, size=n)], b"data": img,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def _write_idx(path: pathlib.Path, array: np.ndarray):
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, array.ndim]))
        for d in array.shape:
            fh.write(struct.pack(">I", d))
        fh.write(array.astype(np.uint8).tobytes())


def _write_mnist(folder: pathlib.Path, rng, n=6):
    folder.mkdir(parents=True)
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, size=n))
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, size=(4, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=4))


@pytest.mark.parametrize("experiment", FILE_DATA_EXPERIMENTS)
def test_each_image_experiment_trains_two_steps_on_synthetic_files(hydra_ctx, tmp_path, experiment):
    rng = np.random.default_rng(0)
    if experiment == "mnist":
        _write_mnist(tmp_path / "data", rng)
        shape, attn = [1, 28, 28], "[14]"
    else:
        _write_cifar_py(tmp_path / "data" / "cifar-10-batches-py", rng)
        shape, attn = [3, 32, 32], "[16]"
    nfe = "sampler.nfe=4" if experiment == "cifar10_ncsnpp" else "sampler.nfe=2"  # pc: 2 steps of 2 evaluations
    cfg = _compose(f"experiment={experiment}", f"data.data_dir={tmp_path / 'data'}", *TINY_NET,
                   f"model.attention_resolutions={attn}", *TINY_RUN, nfe)
    out = train(cfg, str(tmp_path / "run"))
    assert out["step"] == 2 and out["skipped_steps"] == 0
    ck = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "ckpt_0000002.pt"))
    assert ck["event_shape"] == shape
    assert all(np.isfinite(r["loss"]) for r in ck["metrics"]["loss"]) and len(ck["metrics"]["loss"]) == 2
    assert 0 < out["final"]["nfe"] <= (4 if experiment == "cifar10_ncsnpp" else 2)
    assert np.isfinite(out["final"]["sw2"])
    # the experiment's own settings reached the run: the optimiser's lr after 2 steps of warm-up 1
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    # the checkpoint loads without the data files and its EMA network is the trained one
    trained = load_trained(str(tmp_path / "run"), dataset=False)
    assert isinstance(trained.model.backbone, DDPMpp)
    for k, v in out["ema"].module.state_dict().items():
        assert torch.equal(trained.model.state_dict()[k], v), k
