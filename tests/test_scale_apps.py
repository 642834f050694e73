"""Issue 13, part B: the sample app's precision and compile options, the DataLoader input pipeline,
the data statistics in checkpoints (sampling with the data files gone), sampling and likelihood
split across torchrun ranks, and resume across world sizes. Everything runs on the CPU (gloo for
torch.distributed); the fp16 paths need CUDA and are refused here in one line."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sde_gen import VPSDE
from sde_gen.apps.sample import main as sample_main
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.nets import MLP
from sde_gen.nets.score_model import ScoreModel
from sde_gen.precision import check_precision, compile_score, precision_score
from sde_gen.samplers import build_sampler
from sde_gen.training import train

REPO = pathlib.Path(CONF_DIR).parents[1]
SMALL = ["noise_floor_replicates=2", "num_projections=16", "device=cpu", "progress=false"]
TINY_TRAIN = ["model.hidden=16", "model.depth=1", "model.time_embed_dim=8", "train.batch_size=32", "lr_scheduler.warmup=1",
              "train.eval_every=1000", "train.eval_samples=32", "train.eval_projections=8", "train.noise_floor_replicates=2",
              "train.score_error_samples=16", "train.progress=false", "train.plots=false", "sampler.nfe=2", "device=cpu"]

pytestmark = pytest.mark.usefixtures("hydra_full_errors")


def _compose(*overrides):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """A tiny MLP trained 4 steps on ring2d: a network score for the app tests."""
    run = tmp_path_factory.mktemp("ring") / "train"
    train(_compose(*TINY_TRAIN, "train.steps=4", "train.checkpoint_every=4"), str(run))
    return run


def _sample(out, *args):
    sample_main([*args, f"hydra.run.dir={out}", *SMALL])
    return torch.load(out / "samples.pt", weights_only=True), json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------- 1. precision and compile
def _net_score(seed=0):
    torch.manual_seed(seed)
    sde = VPSDE()
    model = ScoreModel(MLP(dim=2, hidden=32, depth=2, time_embed_dim=16), sde).eval().requires_grad_(False)
    return sde, model


def test_bf16_autocast_touches_only_the_network_and_stays_close_to_fp32():
    sde, model = _net_score()
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    sampler = build_sampler("heun", nfe=10)
    runs = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        score = precision_score(model, precision, "cpu")
        res = sampler(sde, score, shape=(256, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
        runs[precision] = res.samples
        # the state stays float32 whatever the network computes in; the network ran in bf16 under autocast
        assert res.samples.dtype == torch.float32 and torch.isfinite(res.samples).all()
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    diff = (runs["bf16"] - runs["fp32"]).abs()
    spread = runs["fp32"].std()
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 = 0.002): the samples move, by a small amount
    assert 0 < float(diff.mean()) < 0.02 * float(spread) and float(diff.max()) < 0.2 * float(spread)
    # a float64 sampler keeps a float64 state under a bf16 network
    res = sampler(sde, precision_score(model, "bf16", "cpu"), shape=(8, 2), generator=torch.Generator().manual_seed(1),
                  dtype=torch.float64)
    assert res.samples.dtype == torch.float64


def test_precision_wrapper_keeps_the_guided_batch_cost_and_refuses_fp16_off_cuda():
    sde, model = _net_score()

    def guided(x, t):
        return model(x, t)

    guided.batch_cost = 2
    assert precision_score(guided, "bf16", "cpu").batch_cost == 2
    assert precision_score(guided, "fp32", "cpu") is guided
    with pytest.raises(ValueError, match=r"precision=fp16 needs a CUDA device; device is 'cpu'"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\]; got 'fp8'"):
        check_precision("fp8", torch.device("cpu"))


@pytest.mark.slow  # importing torch._dynamo and capturing the graph: ~10 s on a loaded 2-core machine
def test_compiled_score_equals_eager_and_a_failing_compile_falls_back(monkeypatch, caplog):
    sde, model = _net_score()
    sampler = build_sampler("euler_maruyama", nfe=5)
    eager = sampler(sde, model, shape=(64, 2), generator=torch.Generator().manual_seed(2)).samples
    compiled = sampler(sde, compile_score(model, "aot_eager"), shape=(64, 2), generator=torch.Generator().manual_seed(2)).samples
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)

    def broken(*args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("backend exploded")
        return fails

    monkeypatch.setattr(torch, "compile", broken)
    score = compile_score(model, "aot_eager")
    with caplog.at_level("WARNING"):
        again = sampler(sde, score, shape=(64, 2), generator=torch.Generator().manual_seed(2)).samples
    assert score.fell_back and torch.equal(again, eager)
    assert sum("failed on the first score call" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match=r"compile_backend='nope' is not a torch.compile backend"):
        compile_score(model, "nope")


CKPT_SAMPLE = ["source=checkpoint", "sampler=heun", "sampler.nfe=6", "num_samples=128", "seed=5", "plot=false"]


def test_sample_app_bf16_on_a_checkpoint_is_finite_and_close_to_fp32(ring_run, tmp_path):
    a, ma = _sample(tmp_path / "fp32", *CKPT_SAMPLE, f"checkpoint={ring_run}")
    b, mb = _sample(tmp_path / "bf16", *CKPT_SAMPLE, f"checkpoint={ring_run}", "precision=bf16")
    assert ma["precision"] == "fp32" and mb["precision"] == "bf16"
    assert b.dtype == torch.float32 and torch.isfinite(b).all() and mb["finite_fraction"] == 1.0
    diff = float((a - b).abs().mean())
    assert 0 < diff < 0.02 * float(a.std())


@pytest.mark.slow  # torch.compile through the app: ~15 s on a loaded 2-core machine
def test_sample_app_compiled_checkpoint_equals_eager(ring_run, tmp_path):
    a, _ = _sample(tmp_path / "eager", *CKPT_SAMPLE, f"checkpoint={ring_run}")
    c, mc = _sample(tmp_path / "compiled", *CKPT_SAMPLE, f"checkpoint={ring_run}", "compile=true", "compile_backend=aot_eager")
    assert mc["compile"] is True
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


def test_sample_app_refuses_fp16_on_the_cpu_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"precision=fp16 needs a CUDA device"):
        sample_main(["precision=fp16", f"hydra.run.dir={tmp_path}", *SMALL])
    assert not (tmp_path / "samples.pt").exists()
    with pytest.raises(Exception, match=r"precision"):
        sample_main(["precision=fp64", f"hydra.run.dir={tmp_path}", *SMALL])


# ---------------------------------------------------------------- 2. the DataLoader input pipeline
from sde_gen.config import ConfigError  # noqa: E402
from sde_gen.data import ImageDataset  # noqa: E402
from sde_gen.data.loader import GlobalBatchSampler, image_loader  # noqa: E402


def _images(n=10, hflip=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randint(0, 256, (n, 1, 4, 5), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return ImageDataset(px, px[:2], 256, labels, labels[:2], num_classes=3, hflip=hflip)


def test_global_batch_sampler_visits_every_image_once_an_epoch_and_shards_each_global_batch():
    N, B = 10, 4
    one = GlobalBatchSampler(N, B, seed=7, hflip=True)
    steps = [one.global_batch(s) for s in range(5)]  # 20 positions: epochs 0 and 1, step 2 straddles them
    order = torch.cat([i for i, _ in steps])
    assert sorted(order[:N].tolist()) == list(range(N)) and sorted(order[N:].tolist()) == list(range(N))
    assert not torch.equal(order[:N], order[N:])  # a fresh permutation each epoch
    flips = torch.cat([f for _, f in steps])
    # the flip bit belongs to the (epoch, position) pair, not to the step that reads it
    perm0, bits0 = one.epoch(0)
    assert torch.equal(flips[:N], bits0) and torch.equal(order[:N], perm0)
    # two ranks read the two halves of the same global batch, step by step
    it = iter(one)
    ranks = [iter(GlobalBatchSampler(N, B, seed=7, rank=r, world_size=2, hflip=True)) for r in range(2)]
    for s in range(5):
        whole = next(it)
        assert next(ranks[0]) + next(ranks[1]) == whole
        assert whole == list(zip(steps[s][0].tolist(), steps[s][1].tolist()))
    # a resumed sampler starts at its step with no other state
    later = iter(GlobalBatchSampler(N, B, seed=7, start_step=3, hflip=True))
    assert next(later) == list(zip(steps[3][0].tolist(), steps[3][1].tolist()))
    # the seed decides the order; no flips without hflip
    assert not torch.equal(GlobalBatchSampler(N, B, seed=8).global_batch(0)[0], steps[0][0])
    assert not GlobalBatchSampler(N, B, seed=7).global_batch(0)[1].any()


def test_dataloader_batches_equal_the_dataset_rows_whatever_the_worker_count():
    data = _images()
    sampler = GlobalBatchSampler(10, 4, seed=3, hflip=True)
    batches = {}
    for workers in (0, 2):
        it = iter(image_loader(data, 4, seed=3, labels=True, num_workers=workers))
        batches[workers] = [next(it) for _ in range(4)]
    for s, ((x0, y0), (x2, y2)) in enumerate(zip(batches[0], batches[2])):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
        index, flip = sampler.global_batch(s)
        expected = torch.where(flip.view(-1, 1, 1, 1), data.train[index].flip(-1), data.train[index])
        assert torch.equal(x0, expected) and torch.equal(y0, data.train_labels[index])
    with pytest.raises(ValueError, match=r"persistent_workers=true needs num_workers >= 1"):
        image_loader(data, 4, seed=3, persistent_workers=True)


DIGITS = ["data=digits", "model=unet", "model.channels=8", "train.batch_size=8", "lr_scheduler.warmup=1",
          "train.eval_every=1000", "train.checkpoint_every=2", "train.progress=false", "train.plots=false",
          "train.log_every=1", "sampler.nfe=2", "device=cpu", "train.eval_samples=8", "train.eval_projections=4",
          "lr_scheduler=constant"]


def _weights(out):
    return {k: v.detach().clone() for k, v in out["model"].state_dict().items()}


@pytest.mark.slow  # two short runs and a resume (~11 s loaded); the slow 1 -> 2 process resume also covers the loader
def test_dataloader_training_resumes_bit_for_bit_and_differs_from_the_device_sampler(tmp_path):
    loader = [*DIGITS, "train.loader=dataloader"]
    straight = train(_compose(*loader, "train.steps=4"), str(tmp_path / "straight"))
    train(_compose(*loader, "train.steps=2"), str(tmp_path / "resumed"))
    resumed = train(_compose(*loader, "train.steps=4", "train.resume=auto"), str(tmp_path / "resumed"))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the on-device sampler draws other batches for the same seed (with replacement, from the shared generator)
    from sde_gen.data import Digits

    digits = Digits()
    first = next(iter(image_loader(digits, 8, seed=0)))
    assert not torch.equal(first, digits.sample_batch(8, torch.Generator().manual_seed(0)))


def test_dataloader_on_data_without_images_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train.loader=dataloader reads finite image data sets"):
        train(_compose(*TINY_TRAIN, "train.steps=2", "train.loader=dataloader"), str(tmp_path / "a"))
    with pytest.raises(Exception, match=r"persistent_workers"):
        train(_compose(*DIGITS, "train.steps=2", "train.loader=dataloader", "train.persistent_workers=true"),
              str(tmp_path / "b"))


# ---------------------------------------------------------------- 3. data statistics in the checkpoint
from sde_gen.apps.evaluate import main as eval_main  # noqa: E402
from sde_gen.checkpoint import CheckpointError, load_checkpoint, load_trained, save_checkpoint  # noqa: E402
from sde_gen.data.stats import DataStats  # noqa: E402


def _write_folder(root, rng):
    from matplotlib import image as mpimg

    for cls in ("ant", "bee"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            mpimg.imsave(str(root / cls / f"{i}.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny conditional U-Net trained 2 steps on synthetic PNG files, which are then deleted."""
    base = tmp_path_factory.mktemp("folder")
    _write_folder(base / "images", np.random.default_rng(0))
    cfg = _compose("data=image_folder", f"data.data_dir={base / 'images'}", "data.test_fraction=0.2", "model=unet",
                   "model.channels=8", "model.num_classes=auto", "train.steps=2", "train.batch_size=4",
                   "train.eval_every=1000", "train.checkpoint_every=2", "train.progress=false", "train.plots=false",
                   "sampler.nfe=2", "device=cpu", "train.eval_samples=4", "train.eval_projections=4", "lr_scheduler.warmup=1")
    train(cfg, str(base / "train"))
    with_data = load_trained(str(base / "train"))
    shutil.rmtree(base / "images")
    return base / "train", with_data


def test_image_checkpoint_samples_with_its_training_files_deleted(folder_run, tmp_path, caplog):
    run, with_data = folder_run
    ck = load_checkpoint(str(run / "checkpoints" / "ckpt_0000002.pt"))
    stats = ck["data_stats"]
    data = with_data.dataset
    # the stored statistics are those of the data set the run trained on
    assert stats == {"name": "image_folder", "event_shape": [3, 8, 8], "data_std": pytest.approx(data.data_std()),
                     "num_levels": 256, "num_bits": 8, "num_classes": 2, "classes": ["ant", "bee"],
                     "normalization": "2v/L-1"}
    with caplog.at_level("WARNING"):
        gone = load_trained(str(run))
    assert isinstance(gone.dataset, DataStats) and "using the data statistics stored" in caplog.text
    # the same network (its preconditioning uses data_std) and the same pixel map as with the data on disk
    for k, v in with_data.model.state_dict().items():
        assert torch.equal(gone.model.state_dict()[k], v)
    v = torch.tensor([0.0, 100.5, 255.99])
    assert torch.equal(gone.dataset.to_model(v), data.to_model(v))
    x = torch.tensor([-1.0, 0.0, 0.999])
    assert torch.equal(gone.dataset.quantize(x), data.quantize(x))
    samples, m = _sample(tmp_path / "s", "source=checkpoint", f"checkpoint={run}", "sampler=euler_maruyama",
                         "sampler.nfe=2", "num_samples=4", "label=1")
    assert samples.shape == (4, 3, 8, 8) and torch.isfinite(samples).all()
    assert m["num_classes"] == 2 and m["label_counts"] == {"1": 4} and (tmp_path / "s" / "samples.png").is_file()


def test_test_set_likelihood_without_the_files_and_old_checkpoints_fail_in_one_line(folder_run, tmp_path):
    run, _ = folder_run
    with pytest.raises(ValueError, match=r"needs its test data, but the data set 'image_folder' cannot be rebuilt"):
        eval_main(["source=checkpoint", f"checkpoint={run}", "device=cpu", f"hydra.run.dir={tmp_path / 'e'}"])
    # a checkpoint from before this change (no data_stats) whose data are gone: one CheckpointError line
    old = dict(load_checkpoint(str(run / "checkpoints" / "ckpt_0000002.pt")))
    del old["data_stats"]
    save_checkpoint(str(tmp_path / "old" / "ckpt_0000002.pt"), old)
    with pytest.raises(CheckpointError, match=r"predates the data statistics stored in checkpoints") as err:
        load_trained(str(tmp_path / "old"))
    assert "\n" not in str(err.value) and "image_folder" in str(err.value)
    # it still loads without its data set, as before (event_shape and data_std were stored already)
    assert load_trained(str(tmp_path / "old"), dataset=False).model is not None


def test_data_stats_round_trip_and_refuse_bad_fields():
    s = DataStats("digits", [1, 8, 8], 0.5, num_levels=17, num_classes=10, normalization="2v/L-1")
    assert DataStats.from_dict(s.as_dict()).as_dict() == s.as_dict()
    assert s.model_per_pixel == 2 / 17 and s.quantize(torch.tensor([-1.0, 0.99])).tolist() == [0, 16]
    with pytest.raises(ValueError, match=r"event_shape must be a non-empty list of integers >= 1"):
        DataStats("x", [0, 2], 1.0)
    with pytest.raises(ValueError, match=r"data_std must be a number > 0"):
        DataStats("x", [2], 0.0)
    with pytest.raises(ValueError, match=r"num_levels must be an integer >= 2 for image data"):
        DataStats("x", [1, 2, 2], 1.0, normalization="2v/L-1")
    with pytest.raises(ValueError, match=r"normalization must be one of"):
        DataStats("x", [2], 1.0, normalization="zscore")
    with pytest.raises(ValueError, match=r"is not on disk"):
        s.sample_batch(2)


# ---------------------------------------------------------------- 4. sampling and likelihood across ranks
def test_batches_dealt_to_three_ranks_concatenate_to_the_single_process_samples(monkeypatch):
    # the sharding and the per-batch streams in one process: ranks 0, 1, 2 of 3 run in turn and a
    # stand-in for the gather hands their parts to the last one
    from sde_gen import make_preset
    from sde_gen.apps import sample as app_module
    from sde_gen.config_apps import SampleAppConf
    from sde_gen.distributed import DistInfo, shard_range

    app = SampleAppConf(num_samples=23, batch_size=5, seed=1, progress=False)
    sde = VPSDE()
    score = make_preset("ring2d").score_fn(sde)
    sampler = build_sampler("euler_maruyama", nfe=4)
    run = lambda info: app_module._sample_in_batches(app, sampler, sde, lambda a, b: score, (2,), torch.device("cpu"),  # noqa: E731
                                                     torch.float32, info)
    one = run(DistInfo())
    parts = []
    monkeypatch.setattr(app_module, "gather_to_main",
                        lambda obj, info: parts.append(obj) or (list(parts) if info.rank == 2 else None))
    outs = [run(DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert outs[0] is None and outs[1] is None
    assert [p["samples"].shape[0] for p in parts] == [10, 10, 3]  # 5 batches: 2, 2 and 1 (of 3 rows)
    assert torch.equal(outs[2]["samples"], one["samples"]) and outs[2]["nfe_per_batch"] == one["nfe_per_batch"]
    assert [list(shard_range(5, r, 3)) for r in range(3)] == [[0, 1], [2, 3], [4]]
    assert list(shard_range(2, 2, 3)) == []  # more ranks than batches: the last one draws nothing


def _torchrun(cwd, module, *overrides, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module,
           *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_likelihood_batches_dealt_to_two_ranks_give_the_single_process_values(monkeypatch):
    from types import SimpleNamespace

    from sde_gen import make_preset
    from sde_gen.apps import evaluate as eval_module
    from sde_gen.distributed import DistInfo

    sde, oracle = VPSDE(), make_preset("ring2d")
    x = oracle.sample(19, torch.Generator().manual_seed(0), dtype=torch.float64)
    conf = SimpleNamespace(batch_size=4, seed=3, progress=False)
    kw = dict(divergence="hutchinson", num_probes=2, fixed_steps=3)

    def run(info):
        g = torch.Generator().manual_seed(3)
        return eval_module._evaluate_split(sde, oracle.score_fn(sde), x, conf, g, torch.device("cpu"), torch.float64,
                                           info, **kw)

    one = run(DistInfo())
    # the probes really are random per batch: another seed moves the estimate
    conf.seed = 4
    other = eval_module._evaluate_split(sde, oracle.score_fn(sde), x, conf, torch.Generator().manual_seed(4),
                                        torch.device("cpu"), torch.float64, DistInfo(), **kw)
    assert not torch.equal(other.values, one.values)
    conf.seed = 3
    parts = []
    monkeypatch.setattr(eval_module, "gather_to_main",
                        lambda obj, info: parts.append(obj) or (list(parts) if info.rank == 1 else None))
    assert run(DistInfo(rank=0, world_size=2)) is None
    two = run(DistInfo(rank=1, world_size=2))
    assert torch.equal(two.values, one.values) and torch.equal(two.estimator_std_error, one.estimator_std_error)
    assert torch.isfinite(one.estimator_std_error).all()  # two probes: a spread to measure
    assert two.nfe == one.nfe and two.values.shape == (19,)


@pytest.mark.slow  # two torchrun processes: ~15 s quiet, ~40 s on a loaded 2-core machine
def test_two_gloo_processes_sample_what_one_process_samples(tmp_path):
    # 53 rows in batches of 10: 6 batches, ranks 0 and 1 draw 3 each (the last one 3 rows), each
    # batch from its own stream; classifier-free guidance on the oracle checks that every rank
    # takes its rows' labels
    args = ["problem=ring2d", "sampler=euler_maruyama", "sampler.nfe=5", "num_samples=53", "batch_size=10", "seed=4",
            "guidance.kind=cfg", "guidance.scale=2", "plot=false", *SMALL]
    proc = _torchrun(tmp_path, "sde_gen.sample", *args, f"hydra.run.dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, m1 = _sample(tmp_path / "one", *args)
    two = torch.load(tmp_path / "two" / "samples.pt", weights_only=True)
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert torch.equal(two, one) and two.shape == (53, 2)
    assert m2["num_processes"] == 2 and m1["num_processes"] == 1
    assert m2["num_batches"] == m1["num_batches"] == 6 and m2["score_calls"] == m1["score_calls"]
    assert m2["label_counts"] == m1["label_counts"] and m2["class_metrics"] == m1["class_metrics"]
    assert torch.equal(torch.load(tmp_path / "two" / "labels.pt"), torch.load(tmp_path / "one" / "labels.pt"))
    # each batch has its own stream: no two batches repeat their noise
    assert not torch.equal(one[:10], one[10:20])


@pytest.mark.slow  # two torchrun processes
def test_two_gloo_processes_evaluate_the_likelihood_one_process_evaluates(tmp_path):
    from sde_gen.apps.evaluate import run_eval

    # Hutchinson probes: random draws in every batch, so the streams must follow the batch, not the rank
    args = ["source=oracle", "problem=ring2d", "sde=vp", "num_test=30", "batch_size=8", "device=cpu", "progress=false",
            "likelihood.divergence=hutchinson", "likelihood.fixed_steps=4", "seed=2"]
    proc = _torchrun(tmp_path, "sde_gen.evaluate", *args, f"hydra.run.dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="eval", overrides=args)
    GlobalHydra.instance().clear()
    one = run_eval(cfg, str(tmp_path / "one"))
    two = json.loads((tmp_path / "two" / "likelihood.json").read_text())
    assert two["num_processes"] == 2 and one["num_processes"] == 1 and two["num_test"] == 30
    for key in ("model_logp_nats", "model_minus_exact_nats", "exact_logp_nats"):
        assert two[key]["mean"] == pytest.approx(one[key]["mean"], rel=1e-12, abs=1e-12), key
        assert two[key]["std_error"] == pytest.approx(one[key]["std_error"], rel=1e-12), key
    assert two["nfe"] == one["nfe"] and two["hutchinson_std_error_mean"] == pytest.approx(one["hutchinson_std_error_mean"])


# ---------------------------------------------------------------- 5. resume across world sizes
@pytest.mark.slow  # torchrun and a U-Net: ~1 min per case on a loaded 2-core machine
@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_one_process_run_resumes_on_two_processes(tmp_path, loader):
    # 1 process for 2 steps, then 2 gloo processes to step 4 == 1 process for 4 steps, to the rounding
    # of the gradient all-reduce; conditional, so the label dropout's draws are shared too
    # (lr 2e-4: Adam turns a gradient component that is rounding noise into an lr-sized step of either
    # sign, so at lr 0.01 the U-Net weights of 1 and 2 processes differ by 1.5e-3 after 4 straight
    # steps, at 2e-4 by 1e-6; docs/gpu.md)
    over = [*DIGITS, "model.num_classes=auto", "train.label_dropout=0.3", "train.checkpoint_every=100",
            "optimizer.lr=2e-4", f"train.loader={loader}"]
    straight = train(_compose(*over, "train.steps=4"), str(tmp_path / "one"))
    train(_compose(*over, "train.steps=2"), str(tmp_path / "mix"))
    proc = _torchrun(tmp_path, "sde_gen.train", *over, "train.steps=4", "train.resume=auto",
                     f"hydra.run.dir={tmp_path / 'mix'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(str(tmp_path / "mix" / "checkpoints" / "ckpt_0000004.pt"))
    one = _weights(straight)
    diff = max(float((ck["model"][k] - v).abs().max()) for k, v in one.items())
    print(f"loader={loader}: max |w(1 -> 2 processes) - w(1 process)| = {diff:.3g}")
    for k, v in one.items():
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-5, atol=1e-5)
    for k, v in straight["ema"].state_dict().items():
        torch.testing.assert_close(ck["ema"][k], v, rtol=1e-5, atol=1e-5)
    moved = max(float((v - train(_compose(*over, "train.steps=1"), str(tmp_path / "init"))["model"].state_dict()[k])
                      .abs().max()) for k, v in one.items())
    assert moved > 100 * max(diff, 1e-7)  # the steps moved the weights far beyond the rounding
    one_ck = load_checkpoint(str(tmp_path / "one" / "checkpoints" / "ckpt_0000004.pt"))
    for a, b in zip(ck["metrics"]["loss"], one_ck["metrics"]["loss"]):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
