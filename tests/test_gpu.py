"""Issue 13, the parts that run on a CPU: mixed precision (bf16 autocast, fp16 refused on the CPU),
torch.compile with its eager fallback, the CUDA RNG states in checkpoints (old checkpoints still
load), data-parallel training with torchrun (2 gloo processes == 1 process on the global batch),
and the image input pipeline (cifar-10-batches-py, image folders, flips). GPU-only checks skip
without CUDA."""
import logging
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from sde_gen.checkpoint import load_checkpoint
from sde_gen.config import CONF_DIR, ConfigError, register_configs
from sde_gen.data import CIFAR10, ImageFolder
from sde_gen.distributed import shard_batch_size
from sde_gen.losses import DenoisingScoreMatching, NoiseConditionalCrossEntropy
from sde_gen.sdes import VPSDE
from sde_gen.train_state import TrainState
from sde_gen.training import train

REPO = pathlib.Path(CONF_DIR).parents[1]
TINY = [
    "model.hidden=16", "model.depth=1", "model.time_embed_dim=8",
    "train.batch_size=32", "lr_scheduler.warmup=2", "train.eval_samples=64", "train.eval_projections=16",
    "train.noise_floor_replicates=2", "train.score_error_samples=32", "train.progress=false",
    "train.plots=false", "train.log_every=1", "sampler.nfe=4", "device=cpu",
]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        yield


def _compose(*overrides):
    return compose(config_name="config", overrides=list(overrides))


def _weights(out):
    return {k: v.detach().clone() for k, v in out["model"].state_dict().items()}


# ---------------------------------------------------------------- mixed precision and compile
def test_bf16_autocast_training_on_cpu_runs_stays_finite_and_keeps_float32_state(hydra_ctx, tmp_path):
    base = TINY + ["train.steps=6", "train.eval_every=100", "lr_scheduler=constant"]
    fp32 = train(_compose(*base), str(tmp_path / "fp32"))
    bf16 = train(_compose(*base, "train.precision=bf16"), str(tmp_path / "bf16"))
    ck = load_checkpoint(str(tmp_path / "bf16" / "checkpoints" / "ckpt_0000006.pt"))
    losses = [r["loss"] for r in ck["metrics"]["loss"]]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert bf16["skipped_steps"] == 0
    # master weights, EMA and optimiser moments stay float32
    for part in ("model", "ema"):
        assert all(v.dtype == torch.float32 for v in ck[part].values() if v.is_floating_point()), part
    for st in ck["optimizer"]["state"].values():
        assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
    # autocast really ran in bf16: the weights differ from the float32 run, by a bf16-sized amount
    w32, w16 = _weights(fp32), _weights(bf16)
    diff = max(float((w32[k] - w16[k]).abs().max()) for k in w32)
    scale = max(float(w32[k].abs().max()) for k in w32)
    assert 0 < diff < 0.05 * scale


def test_bf16_autocast_forward_runs_the_network_in_bf16(hydra_ctx):
    # the loss under the training loop's autocast: the network's matmuls in bf16, the loss float32
    from sde_gen.nets import MLP

    net = MLP(dim=2, hidden=16, depth=1, time_embed_dim=8)
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DenoisingScoreMatching()(net, VPSDE(), x0, torch.Generator().manual_seed(1))
    assert seen == [torch.bfloat16] and loss.float().dtype == torch.float32 and torch.isfinite(loss)


def test_fp16_on_cpu_and_bad_precision_fail_at_start_up(hydra_ctx, tmp_path):
    with pytest.raises(ConfigError, match=r"train.precision=fp16 needs a CUDA device"):
        train(_compose(*TINY, "train.steps=2", "train.precision=fp16"), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()  # before any work
    with pytest.raises(ConfigError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\]"):
        train(_compose(*TINY, "train.steps=2", "train.precision=fp8"), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"train.compile_backend='nope' is not a torch.compile backend; allowed: \[.*'inductor'"):
        train(_compose(*TINY, "train.steps=2", "train.compile=true", "train.compile_backend=nope"), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_compiled_training_equals_eager(hydra_ctx, tmp_path):
    # aot_eager traces forward and backward through dynamo and AOTAutograd (the graph capture of
    # every backend) without generating C++: seconds on a CPU, where inductor takes about a minute
    base = TINY + ["train.steps=4", "train.eval_every=100", "lr_scheduler=constant"]
    eager = train(_compose(*base), str(tmp_path / "eager"))
    comp = train(_compose(*base, "train.compile=true", "train.compile_backend=aot_eager"), str(tmp_path / "comp"))
    a, b = _weights(eager), _weights(comp)
    assert a.keys() == b.keys()  # checkpoints hold the plain network's names (no _orig_mod. prefix)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_failed_compilation_falls_back_to_eager_reported_once(hydra_ctx, tmp_path, monkeypatch, caplog):
    calls = []

    def broken_compile(model, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            raise RuntimeError("no compiler here")
        return run

    base = TINY + ["train.steps=3", "train.eval_every=100", "lr_scheduler=constant"]
    eager = train(_compose(*base), str(tmp_path / "eager"))
    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="sde_gen.training"):
        fallback = train(_compose(*base, "train.compile=true"), str(tmp_path / "fb"))
    reports = [r for r in caplog.records if "train.compile" in r.getMessage()]
    assert len(reports) == 1 and "no compiler here" in reports[0].getMessage() and len(calls) == 1
    # the retried step used the same draws: the run equals the eager one bit for bit
    a, b = _weights(eager), _weights(fallback)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_inductor_compiled_training_equals_eager(hydra_ctx, tmp_path):
    base = TINY + ["train.steps=3", "train.eval_every=100", "lr_scheduler=constant"]
    eager = train(_compose(*base), str(tmp_path / "eager"))
    comp = train(_compose(*base, "train.compile=true"), str(tmp_path / "comp"))
    a, b = _weights(eager), _weights(comp)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(hydra_ctx, tmp_path, precision):
    over = [o for o in TINY if o != "device=cpu"] + ["device=cuda", "train.steps=6", "train.eval_every=100",
                                                     f"train.precision={precision}"]
    out = train(_compose(*over), str(tmp_path))
    ck = load_checkpoint(str(tmp_path / "checkpoints" / "ckpt_0000006.pt"))
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in ck["metrics"]["loss"]])))
    assert all(v.dtype == torch.float32 for v in ck["ema"].values() if v.is_floating_point())
    assert ("grad_scaler" in ck) == (precision == "fp16")
    assert out["step"] == 6


# ---------------------------------------------------------------- CUDA RNG states in checkpoints
def _state(device="cpu"):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainState(model, torch.optim.swa_utils.AveragedModel(model), opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), torch.Generator(device).manual_seed(0))


class _FakeCuda:
    """Two CUDA generators, as `torch.cuda` would keep them on a 2-GPU machine."""

    def __init__(self, count=2):
        self.states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(count)]

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])

        def set_state(st, index):
            self.states[index] = st.clone()
        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)


def test_checkpoint_stores_and_restores_every_cuda_generator(monkeypatch):
    fake = _FakeCuda(2)
    fake.install(monkeypatch)
    state = _state().state_dict()
    assert [int(s[0]) for s in state["rng"]["cuda_all"]] == [1, 2]
    fake.states = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]  # the generators move on
    _state().load_state_dict(state)
    assert [int(s[0]) for s in fake.states] == [1, 2]


def test_checkpoints_without_cuda_states_still_load(monkeypatch):
    state = _state().state_dict()  # no CUDA here, or a checkpoint from before the field
    state["rng"].pop("cuda_all", None)
    fake = _FakeCuda(2)
    fake.install(monkeypatch)
    ts = _state()
    ts.load_state_dict(state)  # CUDA present now: the generators are left as they are
    assert [int(s[0]) for s in fake.states] == [1, 2]
    assert torch.equal(ts.generator.get_state(), state["rng"]["train"])


@cuda
def test_cuda_generator_states_round_trip_on_the_device():
    ts = _state("cuda")
    state = ts.state_dict()
    assert len(state["rng"]["cuda_all"]) == torch.cuda.device_count()
    first = torch.randn(4, device="cuda")  # the global CUDA generator (dropout's) moves on
    ts.load_state_dict(state)
    assert torch.equal(torch.randn(4, device="cuda"), first)


def test_old_checkpoint_without_cuda_field_resumes_a_run(hydra_ctx, tmp_path):
    base = TINY + ["train.eval_every=100", "train.checkpoint_every=3", "lr_scheduler=constant"]
    straight = train(_compose(*base, "train.steps=5"), str(tmp_path / "a"))
    train(_compose(*base, "train.steps=3"), str(tmp_path / "b"))
    path = tmp_path / "b" / "checkpoints" / "ckpt_0000003.pt"
    old = load_checkpoint(str(path))
    old["rng"] = {"train": old["rng"]["train"], "torch": old["rng"]["torch"]}  # the layout before this change
    torch.save(old, str(path))
    resumed = train(_compose(*base, "train.steps=5", "train.resume=auto"), str(tmp_path / "b"))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- data-parallel training
@pytest.mark.parametrize("loss_cls", [DenoisingScoreMatching, NoiseConditionalCrossEntropy])
def test_loss_draw_gives_the_numbers_the_loss_draws_itself(loss_cls):
    # the sharded path draws (t, z) for the global batch with `draw`; it must be the same stream
    sde, x0 = VPSDE(), torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 2
    net = torch.nn.Linear(3, 3) if loss_cls is DenoisingScoreMatching else torch.nn.Linear(3, 2)
    fn = lambda x, t, y=None: net(x)  # noqa: E731
    loss = loss_cls()
    direct = loss(fn, sde, x0, torch.Generator().manual_seed(5), y=y)
    draws = loss.draw(sde, x0, torch.Generator().manual_seed(5))
    assert torch.equal(loss(fn, sde, x0, None, y=y, **draws), direct)
    # and the mean of per-shard losses is the global loss
    halves = [loss(fn, sde, x0[s], None, y=y[s], **{k: v[s] for k, v in draws.items()}) for s in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, direct)


def test_draws_follow_the_configured_time_distribution():
    # the EDM recipe draws t log-normally: the sharded path must draw the same times, not uniform ones
    loss = DenoisingScoreMatching(weighting="edm", time_distribution="log_normal")
    sde, x0 = VPSDE(), torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    fn = lambda x, t: -x  # noqa: E731
    direct = loss(fn, sde, x0, torch.Generator().manual_seed(4))
    draws = loss.draw(sde, x0, torch.Generator().manual_seed(4))
    assert torch.equal(loss(fn, sde, x0, None, **draws), direct)


def test_importance_sampled_draws_keep_their_weight():
    loss = DenoisingScoreMatching(weighting="likelihood", importance_sampling=True)
    sde, x0 = VPSDE(), torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    fn = lambda x, t: -x  # noqa: E731
    direct = loss(fn, sde, x0, torch.Generator().manual_seed(3))
    draws = loss.draw(sde, x0, torch.Generator().manual_seed(3))
    assert not torch.allclose(draws["weight"], torch.ones(5))
    assert torch.equal(loss(fn, sde, x0, None, **draws), direct)


def test_more_processes_than_the_batch_allows_is_one_clear_error(hydra_ctx, tmp_path, monkeypatch):
    assert shard_batch_size(32, 4) == 8
    with pytest.raises(ValueError, match=r"batch_size=30 must be divisible by the number of processes \(4\)"):
        shard_batch_size(30, 4)
    monkeypatch.setenv("WORLD_SIZE", "64")
    with pytest.raises(ConfigError, match=r"nproc_per_node \(world size 64\) is larger than train.batch_size=32"):
        train(_compose(*TINY, "train.steps=2"), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def _torchrun(tmp_path, nproc, run_dir, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sde_gen.train", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("conditional", [pytest.param(False, marks=pytest.mark.slow), True], ids=["uncond", "cond"])
def test_two_gloo_processes_equal_one_process_on_the_global_batch(hydra_ctx, tmp_path, conditional):
    over = TINY + ["train.steps=4", "train.eval_every=100", "train.checkpoint_every=100", "train.ema_decay=0.5",
                   "lr_scheduler=constant", "optimizer.lr=0.01"]
    if conditional:
        over += ["model.num_classes=auto", "train.label_dropout=0.3"]
    single = train(_compose(*over), str(tmp_path / "one"))
    proc = _torchrun(tmp_path, 2, tmp_path / "two", *over)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(str(tmp_path / "two" / "checkpoints" / "ckpt_0000004.pt"))
    one_model, one_ema = single["model"].state_dict(), single["ema"].state_dict()
    diff = {k: float((ck["model"][k] - v).abs().max()) for k, v in one_model.items()}
    print(f"max |w_2proc - w_1proc| = {max(diff.values()):.3g}")
    for k, v in one_model.items():
        # equal up to the summation order of the gradient all-reduce
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-5, atol=1e-6)
    for k, v in one_ema.items():
        torch.testing.assert_close(ck["ema"][k], v, rtol=1e-5, atol=1e-6)
    # the run moved the weights far beyond that tolerance (a test that cannot pass by standing still)
    init = train(_compose(*[o for o in over if not o.startswith("train.steps")], "train.steps=1"), str(tmp_path / "init"))
    assert max(float((init["model"].state_dict()[k] - v).abs().max()) for k, v in one_model.items()) > 1e-3
    # the logged loss is the global batch's mean, as one process logs it
    one_ck = load_checkpoint(str(tmp_path / "one" / "checkpoints" / "ckpt_0000004.pt"))
    for a, b in zip(ck["metrics"]["loss"], one_ck["metrics"]["loss"]):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"])
    # only rank 0 wrote: one loss.csv, no stray files of rank 1
    assert (tmp_path / "two" / "loss.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["ckpt_0000004.pt"]


@pytest.mark.slow
def test_two_process_run_resumes_on_one_process(hydra_ctx, tmp_path):
    # the generator is global: 2 processes for 3 steps, then 1 process to 5 == 1 process for 5
    over = TINY + ["train.eval_every=100", "train.checkpoint_every=100", "lr_scheduler=constant"]
    straight = train(_compose(*over, "train.steps=5"), str(tmp_path / "one"))
    proc = _torchrun(tmp_path, 2, tmp_path / "mix", *over, "train.steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = train(_compose(*over, "train.steps=5", "train.resume=auto"), str(tmp_path / "mix"))
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the image input pipeline
def _cifar_arrays(rng, n=3):
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = (rng.integers(0, 256, size=(n, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, size=n))
    return out


def _write_cifar_py(folder, arrays):
    folder.mkdir(parents=True)
    for name, (img, lab) in arrays.items():
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in lab],
                 b"data": img.reshape(len(lab), -1), b"filenames": [f"{i}.png".encode() for i in range(len(lab))]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)  # the protocol of the original (Python 2) files


def test_cifar10_python_layout_read_from_synthetic_pickles(tmp_path):
    arrays = _cifar_arrays(np.random.default_rng(0))
    _write_cifar_py(tmp_path / "cifar-10-batches-py", arrays)
    data = CIFAR10(str(tmp_path))
    assert data.layout == "cifar-10-batches-py" and data.event_shape == (3, 32, 32) and data.train.shape[0] == 15
    np.testing.assert_array_equal(data.test_pixels.numpy(), arrays["test_batch"][0])
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["test_batch"][1])
    np.testing.assert_array_equal(data.train_pixels[6:9].numpy(), arrays["data_batch_3"][0])
    np.testing.assert_array_equal(data.train_labels[6:9].numpy(), arrays["data_batch_3"][1])
    # the same files in the binary layout give the same dataset
    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    for name, (img, lab) in arrays.items():
        rec = np.concatenate([lab[:, None], img.reshape(len(lab), -1)], axis=1).astype(np.uint8)
        (binary / f"{name}.bin").write_bytes(rec.tobytes())
    other = CIFAR10(str(tmp_path / "bin"))
    assert other.layout == "cifar-10-batches-bin" and torch.equal(other.train, data.train)
    # a missing batch is named
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        CIFAR10(str(tmp_path))


def test_cifar10_pickle_that_names_other_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_py(folder, _cifar_arrays(np.random.default_rng(0)))
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": os.getcwd, b"labels": []}, fh, protocol=2)  # names posix.getcwd
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR-10 python batch \(refused: the file names"):
        CIFAR10(str(tmp_path))


def test_missing_data_dir_and_unrecognised_layout_are_one_clear_error_each(tmp_path):
    for cls in (CIFAR10, ImageFolder):
        with pytest.raises(FileNotFoundError, match=r"data_dir='.*nowhere' does not exist"):
            cls(str(tmp_path / "nowhere"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("not data")
    with pytest.raises(ValueError, match=r"cifar10: data_dir=.* is in no recognised layout.*cifar-10-batches-py"):
        CIFAR10(str(tmp_path / "junk"))
    with pytest.raises(ValueError, match=r"image_folder: data_dir=.* is in no recognised layout: it needs class sub-folders"):
        ImageFolder(str(tmp_path / "junk"))


def _write_png(path, pixels):
    """pixels (H, W, 3) uint8 -> a PNG, through matplotlib (the reader's own library)."""
    from matplotlib import image as mpimg

    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(str(path), pixels)


def test_image_folder_reads_classes_from_sub_folders(tmp_path):
    rng = np.random.default_rng(2)
    truth = {}
    for cls, count in (("cat", 3), ("dog", 2), ("emu", 4)):
        for i in range(count):
            px = rng.integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
            _write_png(tmp_path / cls / f"{i:03d}.png", px)
            truth[(cls, i)] = px
    (tmp_path / "empty").mkdir()  # a folder without images is no class
    data = ImageFolder(str(tmp_path), test_fraction=0.3, seed=1)
    assert data.classes == ["cat", "dog", "emu"] and data.num_classes == 3 and data.event_shape == (3, 5, 6)
    assert data.train.shape[0] + data.test.shape[0] == 9 and data.num_bits == 8
    # every image comes back with its pixels and its folder's label
    expected = {(lab, px.transpose(2, 0, 1).tobytes()) for (cls, _), px in truth.items()
                for lab in [data.classes.index(cls)]}
    got = {(int(lab), px.numpy().tobytes()) for pxs, labs in ((data.train_pixels, data.train_labels),
                                                           (data.test_pixels, data.test_labels))
           for px, lab in zip(pxs, labs)}
    assert got == expected
    # images of another size are named
    _write_png(tmp_path / "dog" / "zzz.png", rng.integers(0, 256, size=(7, 6, 3)).astype(np.uint8))
    with pytest.raises(ValueError, match=r"zzz.png is \(3, 7, 6\).*all images must have one size"):
        ImageFolder(str(tmp_path))


def test_hflip_mirrors_about_half_the_batch_with_the_training_generator():
    from sde_gen.data import ImageDataset

    px = torch.arange(2 * 3 * 4, dtype=torch.long).reshape(2, 1, 3, 4) % 256
    plain = ImageDataset(px, px, 256)
    flipped = ImageDataset(px, px, 256, hflip=True)
    x = plain.sample_batch(400, torch.Generator().manual_seed(4))
    xf = flipped.sample_batch(400, torch.Generator().manual_seed(4))
    # the same indices (drawn first), then each image as it is or mirrored left-right
    same = (xf == x).flatten(1).all(1)
    mirrored = (xf == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and not bool((same & mirrored).any())
    assert 150 < int(mirrored.sum()) < 250  # Binomial(400, 1/2): mean 200, sd 10
    # the flips come from the generator: the same seed, the same batch
    assert torch.equal(xf, flipped.sample_batch(400, torch.Generator().manual_seed(4)))


def test_cifar10_config_trains_from_synthetic_python_batches(hydra_ctx, tmp_path):
    _write_cifar_py(tmp_path / "cifar" / "cifar-10-batches-py", _cifar_arrays(np.random.default_rng(3), n=4))
    cfg = _compose("data=cifar10", f"data.data_dir={tmp_path / 'cifar'}", "model=unet",  "model.channels=8", "train.steps=2",
                   "train.batch_size=4", "train.eval_every=100", "train.eval_samples=4", "train.eval_projections=4",
                   "train.progress=false", "train.plots=false", "sampler.nfe=2", "device=cpu", "lr_scheduler.warmup=1",
                   "train.precision=bf16", "train.log_every=1")
    assert cfg.data.hflip is True
    out = train(cfg, str(tmp_path / "run"))
    ck = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "ckpt_0000002.pt"))
    # what sampling needs of the data is in the checkpoint (no data files needed to sample)
    assert ck["event_shape"] == [3, 32, 32] and ck["data_std"] > 0 and out["step"] == 2
    # the convolutional network under bf16 autocast on the CPU: finite losses, no skipped step
    assert out["skipped_steps"] == 0 and all(math.isfinite(r["loss"]) for r in ck["metrics"]["loss"])
