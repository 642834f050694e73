"""The training loop does what its config says, checked from its public outputs only.

Every check reads the checkpoint files a run writes (one per step) and recomputes the optimiser's
arithmetic by hand, so a loop that logs a schedule it never applies, an EMA with the decay the
wrong way round, or clipping that never touches the gradient fails here:

* learning rate: Adam's update is theta_k = theta_{k-1} - lr_k m_hat_k / (sqrt(v_hat_k) + eps), with
  m_hat, v_hat the bias-corrected moments stored in checkpoint k. Given two consecutive checkpoints,
  the learning rate actually applied is the least-squares ratio of the weight change to that
  direction; it must equal the schedule's closed form (linear warm-up, then constant or half-cosine),
  and the `lr` column of `loss.csv` must report it.
* EMA: ema_k = decay ema_{k-1} + (1 - decay) theta_k for every parameter.
* clipping: after the first step Adam's first moment is (1 - beta1) g, so the gradient the optimiser
  used is readable from checkpoint 1; with `grad_clip=c` it must be the unclipped gradient (same seed,
  same batch) times min(1, c / |g|).
"""
import csv
import math
import pathlib

import pytest
import torch
from hydra import compose, initialize_config_dir

from sde_gen.checkpoint import checkpoint_path, load_checkpoint
from sde_gen.config import CONF_DIR, register_configs
from sde_gen.training import train

# a model and evaluation small enough for a few-step run in well under a second; one checkpoint per step
TINY = [
    "model.hidden=16", "model.depth=1", "model.time_embed_dim=8",
    "train.batch_size=32", "train.eval_samples=64", "train.eval_projections=16", "train.eval_every=1000",
    "train.noise_floor_replicates=2", "train.score_error_samples=32", "train.progress=false",
    "train.plots=false", "train.log_every=1", "sampler.nfe=4", "device=cpu",
    "train.checkpoint_every=1", "train.keep_checkpoints=100",
]


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(pathlib.Path(CONF_DIR)), version_base=None):
        yield


def _run(tmp_path, name, *overrides):
    cfg = compose(config_name="config", overrides=TINY + list(overrides))
    out = train(cfg, str(tmp_path / name))
    names = [n for n, _ in out["model"].named_parameters()]
    ckpts = [load_checkpoint(checkpoint_path(str(tmp_path / name / "checkpoints"), k)) for k in range(1, out["step"] + 1)]
    return out, names, ckpts


def _params(state_dict, names, prefix=""):
    return [state_dict[prefix + n].to(torch.float64) for n in names]


def _applied_lr(prev, cur, names):
    """The learning rate that turns checkpoint `prev`'s weights into `cur`'s through Adam's update."""
    group = cur["optimizer"]["param_groups"][0]
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    assert group["weight_decay"] == 0 and not group["amsgrad"]
    num = den = 0.0
    for i, (p0, p1) in enumerate(zip(_params(prev["model"], names), _params(cur["model"], names))):
        st = cur["optimizer"]["state"][i]
        k = float(st["step"])
        m_hat = st["exp_avg"].to(torch.float64) / (1 - beta1 ** k)
        v_hat = st["exp_avg_sq"].to(torch.float64) / (1 - beta2 ** k)
        direction = -m_hat / (v_hat.sqrt() + eps)
        num += float((direction * (p1 - p0)).sum())
        den += float((direction * direction).sum())
    return num / den


def _schedule(lr, warmup, decay, steps, j):
    """Closed form of the learning rate of the (j+1)-th step: warm-up from lr / (warmup + 1) to lr,
    then constant or a half-cosine reaching 0 at `steps`."""
    value = lr * min(1.0, (j + 1) / (warmup + 1))
    if decay == "cosine" and j >= warmup:
        value *= 0.5 * (1 + math.cos(math.pi * min(1.0, (j - warmup) / max(1, steps - warmup))))
    return value


@pytest.mark.parametrize("decay", ["constant", "cosine"])
def test_applied_learning_rate_follows_the_schedule_and_is_what_loss_csv_logs(hydra_ctx, tmp_path, decay):
    steps, warmup, lr = 8, 3, 1e-2
    out, names, ckpts = _run(tmp_path, "run", f"train.steps={steps}", f"lr_scheduler.warmup={warmup}", f"optimizer.lr={lr}",
                             f"lr_scheduler.decay={decay}", "train.grad_clip=null")
    rows = list(csv.DictReader((tmp_path / "run" / "loss.csv").open()))
    assert len(rows) == steps and out["skipped_steps"] == 0
    for j in range(1, steps):
        applied = _applied_lr(ckpts[j - 1], ckpts[j], names)
        expected = _schedule(lr, warmup, decay, steps, j)
        assert applied == pytest.approx(expected, rel=1e-3, abs=1e-7), (j, applied, expected)
        assert float(rows[j]["lr"]) == pytest.approx(applied, rel=1e-3, abs=1e-7), (j, rows[j])
    assert float(rows[0]["lr"]) == pytest.approx(_schedule(lr, warmup, decay, steps, 0), rel=1e-9)


def test_ema_is_the_closed_form_average_of_the_weights(hydra_ctx, tmp_path):
    decay = 0.7  # far from 0.5 and 1, so a swapped or ignored decay is visible
    _, names, ckpts = _run(tmp_path, "run", "train.steps=4", f"train.ema_decay={decay}", "optimizer.lr=1e-2")
    for k in range(1, 4):
        ema_prev = _params(ckpts[k - 1]["ema"], names, "module.")
        ema_cur = _params(ckpts[k]["ema"], names, "module.")
        theta = _params(ckpts[k]["model"], names)
        for n, e0, e1, w in zip(names, ema_prev, ema_cur, theta):
            expected = decay * e0 + (1 - decay) * w
            assert torch.allclose(e1, expected, rtol=1e-5, atol=1e-7), (k, n, float((e1 - expected).abs().max()))
        # and the EMA is not simply the weights (the steps moved them)
        assert max(float((e - w).abs().max()) for e, w in zip(ema_cur, theta)) > 1e-6


def test_gradient_clipping_scales_the_gradient_adam_uses(hydra_ctx, tmp_path):
    common = ["train.steps=1", "lr_scheduler.warmup=0", "lr_scheduler.decay=constant"]
    _, names, free = _run(tmp_path, "free", *common, "train.grad_clip=null")
    beta1 = free[0]["optimizer"]["param_groups"][0]["betas"][0]

    def grads(ckpts):
        return [ckpts[0]["optimizer"]["state"][i]["exp_avg"].to(torch.float64) / (1 - beta1) for i in range(len(names))]

    g = grads(free)
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g))
    assert norm > 0
    for c in (norm / 10, norm * 10):  # clipping active, then a bound the gradient never reaches
        _, _, clipped = _run(tmp_path, f"clip{c:.3g}", *common, f"train.grad_clip={c}")
        used = grads(clipped)
        scale = min(1.0, c / norm)
        used_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in used))
        assert used_norm <= c * (1 + 1e-5)
        for n, a, b in zip(names, used, g):
            assert torch.allclose(a, scale * b, rtol=1e-4, atol=1e-9 * norm), n
