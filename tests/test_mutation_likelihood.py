"""Checks of the likelihood functions written against the mutants that the older likelihood tests
let live (docs/testing.md, "Mutation testing"): `bits_per_dim` recomputed from the same
generator stream and `log_likelihood`, the per-pixel Jacobian, dtypes, defaults, and the
bookkeeping of `evaluate_dataset` (batches, standard errors, time, progress bar, checks)."""
import math
import time

import pytest
import torch

from sde_gen import VPSDE, GaussianMixture
from sde_gen.likelihood import bits_per_dim, evaluate_dataset, log_likelihood

f64 = torch.float64
SDE = VPSDE()
ORACLE = GaussianMixture.gaussian([0.1, -0.2], [0.5, 0.8])
SCORE = ORACLE.score_fn(SDE)
FAST = dict(method="rk4", fixed_steps=2)  # accuracy is not the point: each check recomputes the same solve


class _Map:
    """Pixels v in [0, 4) -> model space x = c v - 1, with c a scalar or one value per pixel."""

    def __init__(self, c):
        self.model_per_pixel = c

    def to_model(self, v):
        return torch.as_tensor(self.model_per_pixel, dtype=v.dtype) * v - 1.0


@pytest.mark.parametrize("c", [0.5, [0.5, 0.25]])
@pytest.mark.parametrize("num_dequant", [1, 3])
def test_bits_per_dim_is_the_change_of_variables_of_each_draw(c, num_dequant):
    pixels = torch.tensor([[0, 3], [2, 1], [1, 1]])
    m = _Map(c)
    got = bits_per_dim(SDE, SCORE, pixels, m, num_dequant=num_dequant, generator=torch.Generator().manual_seed(4), **FAST)
    g = torch.Generator().manual_seed(4)
    draws, nfe = [], 0
    log_c = torch.log(torch.as_tensor(c, dtype=torch.float32)).expand(2).sum()
    for _ in range(num_dequant):
        u = torch.rand(pixels.shape, generator=g, dtype=torch.float32)  # int pixels: torch's default dtype
        res = log_likelihood(SDE, SCORE, m.to_model(pixels.float() + u), generator=g, **FAST)
        draws.append((-res.logp - log_c) / (2 * math.log(2.0)))
        nfe += res.nfe
    draws = torch.stack(draws)
    assert got.draws.dtype == torch.float32 and got.draws.shape == (num_dequant, 3) and got.nfe == nfe
    torch.testing.assert_close(got.draws, draws, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.bpd, draws.mean(0), rtol=1e-6, atol=1e-6)
    if num_dequant == 1:
        assert torch.isnan(got.std_error).all()


def test_bits_per_dim_dtype_and_default_draws():
    pixels = torch.tensor([[0.0, 3.0]], dtype=f64)
    res = bits_per_dim(SDE, SCORE, pixels, _Map(0.5), generator=torch.Generator().manual_seed(0), **FAST)
    assert res.draws.shape == (1, 1) and res.bpd.dtype == f64  # one draw by default; float pixels keep their dtype
    res = bits_per_dim(SDE, SCORE, pixels.float(), _Map(0.5), dtype=f64, **FAST)
    assert res.bpd.dtype == f64


def test_bits_per_dim_checks():
    pixels = torch.tensor([[0, 3]])
    for bad in (0.0, -1.0, [0.5, 0.0]):
        with pytest.raises(ValueError, match=r"^model_per_pixel must be > 0 \(dx/dv of an increasing affine map\)$"):
            bits_per_dim(SDE, SCORE, pixels, _Map(bad), **FAST)
    with pytest.raises(ValueError, match=r"^num_dequant must be an integer >= 1"):
        bits_per_dim(SDE, SCORE, pixels, _Map(0.5), num_dequant=0, **FAST)


def _points(n, seed=0):
    return ORACLE.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_evaluate_dataset_batches_and_statistics(capsys):
    data = _points(257)
    t0 = time.perf_counter()
    out = evaluate_dataset(SDE, SCORE, data, **FAST)
    wall = time.perf_counter() - t0
    one = log_likelihood(SDE, SCORE, data[:3], **FAST)
    # default batches of 256: two solves of a fixed NFE each
    assert out.nfe == 2 * one.nfe and out.unit == "nats" and out.dim == 2
    assert out.values.shape == out.estimator_std_error.shape == (257,) and out.values.dtype == torch.float32
    torch.testing.assert_close(out.values[:3], one.logp, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.estimator_std_error, torch.zeros(257))
    assert out.std_error == pytest.approx(float(out.values.std()) / math.sqrt(257), rel=1e-6)
    assert 0 <= out.seconds <= wall
    assert "likelihood" not in capsys.readouterr().err  # no progress bar unless asked


def test_evaluate_dataset_small_sets_dtype_and_device():
    two = evaluate_dataset(SDE, SCORE, _points(2), device="cpu", **FAST)
    assert two.std_error == pytest.approx(abs(float(two.values[0] - two.values[1])) / 2, rel=1e-5)
    one = evaluate_dataset(SDE, SCORE, _points(1), **FAST)
    assert math.isnan(one.std_error) and one.values.shape == (1,)
    assert evaluate_dataset(SDE, SCORE, _points(2), dtype=f64, **FAST).values.dtype == f64
    ints = torch.tensor([[0, 1], [1, 0]])  # integer points in model space: torch's default dtype
    assert evaluate_dataset(SDE, SCORE, ints, **FAST).values.dtype == torch.float32


def test_evaluate_dataset_images_default_one_draw():
    pixels = torch.tensor([[0, 3], [2, 1]])
    out = evaluate_dataset(SDE, SCORE, pixels, dataset_or_map=_Map(0.5), generator=torch.Generator().manual_seed(0), **FAST)
    assert out.unit == "bits/dim" and torch.isnan(out.estimator_std_error).all() and out.values.dtype == torch.float32


@pytest.mark.parametrize("data", [torch.zeros(5), torch.zeros(0, 2)])
def test_evaluate_dataset_shape_check(data):
    with pytest.raises(ValueError, match=r"^data must have shape \(N, \*event\) with N >= 1; got \((5,|0, 2)\)$"):
        evaluate_dataset(SDE, SCORE, data, **FAST)
