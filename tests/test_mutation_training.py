"""Checks of the training step's state (TrainState) and learning-rate schedule (WarmupLR)
written against the mutants that the older training tests let live (docs/testing.md, "Mutation
testing"): a full round trip of every field, checkpoints of older formats, a stored scheduler
counter that wins over the step, CUDA RNG state ignored on a CPU run."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from sde_gen.optim import WarmupLR, WarmupSchedule
from sde_gen.train_state import TrainState


def _state(seed=0, warmup=2, total=10, lr=0.1):
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return TrainState(model, AveragedModel(model), opt, WarmupLR(opt, warmup=warmup, total_steps=total),
                      torch.Generator().manual_seed(seed))


def _advance(ts, steps):
    for _ in range(steps):
        ts.optimizer.zero_grad()
        ts.model(torch.randn(4, 2, generator=ts.generator)).pow(2).sum().backward()
        ts.optimizer.step()
        ts.ema.update_parameters(ts.model)
        ts.lr_scheduler.step()
        ts.step += 1
        ts.loss_sum += 0.25
        ts.good += 1
    ts.skipped, ts.bad_streak = 2, 1
    ts.loss_rows.append({"step": ts.step, "loss": 0.5, "lr": 0.01, "skipped": 2})
    ts.eval_rows.append({"step": ts.step, "sw2": 0.3})
    ts.timing_rows.append({"step": ts.step, "steps_per_s": 9.0})


def test_round_trip_restores_every_field():
    a = _state()
    _advance(a, 3)
    st = a.state_dict()
    a.loss_sum += 1.0  # the stored sum is a copy, not a view a later step changes
    assert float(st["accumulators"]["loss_sum"]) == 0.75
    b = _state(seed=1)
    b.load_state_dict(st)
    assert b.step == 3 and b.lr_scheduler.last_epoch == 3
    assert (b.loss_rows, b.eval_rows, b.timing_rows) == (a.loss_rows, a.eval_rows, a.timing_rows)
    assert (float(b.loss_sum), b.good, b.skipped, b.bad_streak) == (0.75, 3, 2, 1)
    assert b.loss_sum.device == b.device
    assert torch.equal(b.generator.get_state(), a.generator.get_state())
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]


def test_stored_scheduler_counter_wins_over_the_step():
    a = _state()
    _advance(a, 3)
    st = a.state_dict()
    st["step"] = 5  # e.g. a run whose scheduler was stepped differently: the stored counter is restored
    b = _state()
    b.load_state_dict(st)
    assert b.step == 5 and b.lr_scheduler.last_epoch == 3


def test_old_checkpoint_formats():
    """Before the scheduler, the skip counter, the timing table and the accumulators were stored."""
    a = _state()
    _advance(a, 4)
    st = a.state_dict()
    del st["lr_scheduler"], st["accumulators"], st["metrics"]["timing"]
    st["metrics"]["loss"] = [[2, 0.7, 0.05, 11.0], [4, 0.6, 0.1, 12.0]]
    b = _state()
    b.loss_sum += 3.0
    b.good, b.skipped, b.bad_streak = 7, 7, 7
    b.load_state_dict(st)
    assert b.lr_scheduler.last_epoch == 4
    assert b.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * WarmupSchedule(2, 10, "cosine")(4), rel=1e-15)
    assert b.loss_rows == [{"step": 2, "loss": 0.7, "lr": 0.05, "skipped": 0}, {"step": 4, "loss": 0.6, "lr": 0.1, "skipped": 0}]
    assert b.timing_rows == []
    # no accumulators stored: the ones the resuming run built are kept (a fresh log interval)
    assert (float(b.loss_sum), b.good, b.skipped, b.bad_streak) == (3.0, 7, 7, 7)


def test_cuda_rng_state_is_ignored_on_a_cpu_run():
    a = _state()
    _advance(a, 1)
    st = a.state_dict()
    st["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    b = _state()
    b.load_state_dict(st)  # a GPU run's checkpoint resumed on the CPU
    assert "cuda" not in b.state_dict()["rng"]


def test_scheduler_resume_takes_the_configured_base_rate_and_counters():
    """After the optimiser's state (stored lr 0.2) the scheduler restores the configured base
    rate (0.1) into the groups, the stored counters, and the last rate it reports."""
    old = _state(lr=0.2)
    _advance(old, 5)
    st = old.state_dict()
    new = _state(lr=0.1)
    new.optimizer.load_state_dict(st["optimizer"])
    assert new.optimizer.param_groups[0]["initial_lr"] == 0.2
    st["lr_scheduler"]["_step_count"] = 9  # differs from last_epoch + 1, so the stored one must be read
    new.lr_scheduler.load_state_dict(st["lr_scheduler"])
    expected = 0.1 * WarmupSchedule(2, 10, "cosine")(5)
    group = new.optimizer.param_groups[0]
    assert group["initial_lr"] == 0.1 and group["lr"] == expected
    assert new.lr_scheduler.get_last_lr() == [expected]
    assert new.lr_scheduler._step_count == 9
    legacy = {"last_epoch": 5}  # a state without the step count: one more than the epoch, as torch counts
    new.lr_scheduler.load_state_dict(legacy)
    assert new.lr_scheduler._step_count == 6 and new.lr_scheduler.last_epoch == 5


def test_fresh_state_and_its_device():
    from ._mutation_support import foreign_default_device

    with foreign_default_device():
        ts = _state()
    assert (ts.step, ts.good, ts.skipped, ts.bad_streak) == (0, 0, 0, 0)
    assert ts.loss_sum.device.type == "cpu" and float(ts.loss_sum) == 0.0 and ts.loss_sum.shape == ()


def test_schedule_defaults_and_checks():
    sched = WarmupLR(torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=1.0))
    f = sched.lr_lambdas[0]
    assert (f.warmup, f.total_steps, f.decay) == (200, 6000, "cosine")
    for bad, message in (
        (dict(warmup=True), r"^warmup must be an integer >= 0; got True$"),
        (dict(warmup=2.5), r"^warmup must be an integer >= 0; got 2\.5$"),
        (dict(total_steps=True), r"^total_steps must be an integer >= 1; got True$"),
        (dict(total_steps=10.0), r"^total_steps must be an integer >= 1; got 10\.0$"),
        (dict(decay="linear"), r"^decay must be one of \['cosine', 'constant'\]"),
    ):
        args = dict(warmup=2, total_steps=10, decay="cosine")
        args.update(bad)
        with pytest.raises(ValueError, match=message):
            WarmupSchedule(**args)
