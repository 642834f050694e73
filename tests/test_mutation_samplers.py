"""Checks of the sampler base classes written against the mutants that the older sampler tests
let live (docs/testing.md, "Mutation testing"): `CountingScore` (time broadcasting, the running
OR of non-finite rows), `Sampler.__call__` (the SDE check, the final Tweedie step at t_min, the
grid options, the device of the prior, the non-finite tracking and its log line)."""
import logging

import pytest
import torch

from sde_gen import make_preset
from sde_gen.parameterization import x0_from_score
from sde_gen.samplers.base import CountingScore
from sde_gen.samplers.euler_maruyama import EulerMaruyama
from sde_gen.samplers.grids import time_grid

from .conftest import ALL_SDES_T

f64 = torch.float64


def test_counting_score_broadcasts_a_scalar_time_in_x_dtype():
    seen = []

    def fn(x, t):
        seen.append((tuple(t.shape), t.dtype))
        return -x

    score = CountingScore(fn)
    x = torch.zeros(5, 2)
    score(x, torch.tensor(0.5, dtype=f64))
    score(x, torch.full((5,), 0.5, dtype=f64))
    assert seen == [((5,), torch.float32), ((5,), torch.float32)] and score.calls == 2


def test_nonfinite_rows_accumulate_over_calls():
    score = CountingScore(lambda x, t: x, track_nonfinite=True)
    a, b = torch.zeros(4, 2), torch.zeros(4, 2)
    a[0, 1], b[2, 0] = float("nan"), float("inf")
    score.flag_nonfinite(a)
    score.flag_nonfinite(b)
    assert score.nonfinite.tolist() == [True, False, True, False]


class _Spy(EulerMaruyama):
    """Records what the base class hands to the hooks."""

    seen: dict = None

    def check_sde(self, sde):
        type(self).seen["sde"] = sde

    def solve(self, sde, score, x, ts, generator, callback):
        type(self).seen.update(track=score.track_nonfinite, ts=ts)
        return super().solve(sde, score, x, ts, generator, callback)


def test_hooks_receive_the_sde_the_tracking_flag_and_the_grid():
    sde, gm = ALL_SDES_T[0], make_preset("ring2d")
    for check in (True, False):
        _Spy.seen = {}
        s = _Spy(nfe=6, grid="karras", rho=3.0, t_min=0.01, check_finite=check)
        s(sde, gm.score_fn(sde), shape=(4, 2), generator=torch.Generator().manual_seed(0))
        assert _Spy.seen["sde"] is sde and _Spy.seen["track"] is check
        expected = time_grid(sde, 5, "karras", t_min=0.01, rho=3.0)
        torch.testing.assert_close(_Spy.seen["ts"], expected, rtol=0, atol=0)
        torch.testing.assert_close(s.time_grid(sde), expected, rtol=0, atol=0)


def test_final_denoising_is_tweedie_at_t_min():
    """denoise=True = the same run with one more evaluation, then x0 = (x + s^2 score) / a at t_min."""
    sde, gm = ALL_SDES_T[1], make_preset("ring2d")
    score_fn = gm.score_fn(sde)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(1), dtype=f64)
    plain = EulerMaruyama(nfe=8, denoise=False, t_min=0.05)(sde, score_fn, x_T=x_T, generator=torch.Generator().manual_seed(2))
    den = EulerMaruyama(nfe=9, denoise=True, t_min=0.05)(sde, score_fn, x_T=x_T, generator=torch.Generator().manual_seed(2))
    t = torch.full((16,), 0.05, dtype=f64)
    expected = x0_from_score(sde, plain.samples, t, score_fn(plain.samples, t))
    assert den.nfe == plain.nfe + 1 and den.num_steps == plain.num_steps == 8
    torch.testing.assert_close(den.samples, expected, rtol=1e-12, atol=1e-12)


def test_prior_on_the_requested_device_and_grid_on_the_state_device():
    sde, gm = ALL_SDES_T[0], make_preset("ring2d")
    out = EulerMaruyama(nfe=3)(sde, gm.score_fn(sde), shape=(3, 2), device="meta")
    assert out.samples.device.type == "meta"


def test_exactly_one_of_shape_or_x_T():
    sde = ALL_SDES_T[0]
    with pytest.raises(ValueError, match=r"^give exactly one of shape \(to start from the prior\) or x_T$"):
        EulerMaruyama(nfe=3)(sde, lambda x, t: -x)
    with pytest.raises(ValueError, match=r"^give exactly one of shape \(to start from the prior\) or x_T$"):
        EulerMaruyama(nfe=3)(sde, lambda x, t: -x, shape=(2, 2), x_T=torch.zeros(2, 2))


def test_nonfinite_warning_lists_the_first_ten_rows(caplog):
    sde = ALL_SDES_T[0]

    def bad(x, t):
        out = -x.clone()
        out[:12] = float("nan")
        return out

    with caplog.at_level(logging.WARNING, logger="sde_gen.samplers.base"):
        res = EulerMaruyama(nfe=3, check_finite=True)(sde, bad, shape=(20, 2), generator=torch.Generator().manual_seed(0))
    assert res.num_nonfinite == 12
    msg = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert msg and msg[0].endswith("first rows: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")


def test_counting_score_does_not_track_unless_asked():
    score = CountingScore(lambda x, t: x)
    score(torch.full((3, 2), float("nan")), torch.tensor(0.5))
    assert score.nonfinite is None and not score.track_nonfinite


@pytest.mark.parametrize("kwargs,message", [
    (dict(nfe=0), r"^nfe must be an integer >= 1"),
    (dict(denoise=1), r"^denoise must be a bool \(True or False\); got 1$"),
    (dict(check_finite="yes"), r"^check_finite must be a bool \(True or False\); got 'yes'$"),
    (dict(grid="linear"), r"^grid must be one of \['uniform', 'log_snr', 'karras', 'optimized'\]"),
    (dict(rho=0.0), r"^rho must be > 0"),
    (dict(t_min=-1.0), r"^t_min must be > 0"),
])
def test_options_are_checked_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EulerMaruyama(**kwargs)
