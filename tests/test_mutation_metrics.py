"""Exact checks of the metrics written against the mutants that the older metric tests let live
(docs/testing.md, "Mutation testing"): the unequal-size 1-D W2 against an independent numpy
quantile interpolation, float64 throughout, the defaults, the error messages, and tensors that
follow the inputs (a meta-device input on a CPU-only machine)."""
import numpy as np
import pytest
import torch

from sde_gen import make_preset
from sde_gen.metrics import bures_wasserstein, gaussian_w2_to_target, mode_weight_error, noise_floor, sliced_wasserstein

from ._mutation_support import foreign_default_device

f64 = torch.float64


def _quantiles(sorted_vals: np.ndarray, k: int) -> np.ndarray:
    """Quantiles at levels (i + 1/2) / k of n sorted values: linear interpolation at the fractional
    index (i + 1/2) n / k - 1/2, held constant beyond the first and last value (numpy.interp)."""
    n = len(sorted_vals)
    return np.interp((np.arange(k) + 0.5) * n / k - 0.5, np.arange(n), sorted_vals)


@pytest.mark.parametrize("n,m", [(3, 7), (7, 3), (5, 5), (2, 9), (10, 4)])
def test_one_dimensional_sliced_w2_is_the_quantile_formula(n, m):
    """In 1-D every direction is +-1, so SW2^2 = mean_i (Qx(p_i) - Qy(p_i))^2 over k = max(n, m)
    levels, whatever the directions drawn."""
    g = torch.Generator().manual_seed(n * 10 + m)
    x = torch.randn(n, 1, generator=g, dtype=f64) * 2.0 + 0.3
    y = torch.rand(m, 1, generator=g, dtype=f64) * 3.0 - 1.0
    k = max(n, m)
    qx = _quantiles(np.sort(x[:, 0].numpy()), k)
    qy = _quantiles(np.sort(y[:, 0].numpy()), k)
    expected = float(np.sqrt(np.mean((qx - qy) ** 2)))
    got = sliced_wasserstein(x, y, num_projections=3, generator=g)
    assert got.dtype == f64 and got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-13, abs=1e-15)
    # the same from float32 inputs (converted to float64 before any arithmetic)
    got32 = sliced_wasserstein(x.float(), y.float(), num_projections=3, generator=g)
    qx = _quantiles(np.sort(x[:, 0].float().double().numpy()), k)
    qy = _quantiles(np.sort(y[:, 0].float().double().numpy()), k)
    assert got32.dtype == f64
    assert float(got32) == pytest.approx(float(np.sqrt(np.mean((qx - qy) ** 2))), rel=1e-13, abs=1e-15)


def test_sliced_w2_directions_come_from_the_generator_and_default_to_1000():
    g = lambda: torch.Generator().manual_seed(3)
    x = torch.randn(50, 4, generator=g(), dtype=f64)
    y = torch.randn(40, 4, generator=torch.Generator().manual_seed(4), dtype=f64) + 0.5
    a = sliced_wasserstein(x, y, generator=g())
    assert torch.equal(a, sliced_wasserstein(x, y, 1000, g()))
    assert not torch.equal(a, sliced_wasserstein(x, y, 1001, g()))
    # the unit directions, drawn as in the definition: same generator, same order
    theta = torch.randn(4, 1000, generator=g(), dtype=f64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ theta, 0)[0].numpy(), torch.sort(y @ theta, 0)[0].numpy()
    d2 = [np.mean((_quantiles(px[:, j], 50) - _quantiles(py[:, j], 50)) ** 2) for j in range(1000)]
    assert float(a) == pytest.approx(float(np.sqrt(np.mean(d2))), rel=1e-12)


def test_sliced_w2_follows_the_input_device():
    """Inputs on another device than the generator (here meta, generator on the CPU): the
    directions are drawn where the generator lives and moved to the inputs, y follows x."""
    x = torch.empty(6, 3, device="meta")
    y = torch.randn(5, 3)
    assert sliced_wasserstein(x, y, 7, generator=torch.Generator().manual_seed(0)).device.type == "meta"
    assert sliced_wasserstein(x, y, 7).device.type == "meta"
    with foreign_default_device():
        xc, yc = torch.zeros(6, 3, device="cpu"), torch.ones(5, 3, device="cpu")
        assert sliced_wasserstein(xc, yc, 7, generator=torch.Generator().manual_seed(0)).device.type == "cpu"


def test_sliced_w2_errors_name_the_field():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"^num_projections must be an integer >= 1"):
        sliced_wasserstein(x, x, 0)
    with pytest.raises(ValueError, match=r"^x and y must have the same dimension; got 2 and 3$"):
        sliced_wasserstein(x, torch.zeros(4, 3))


def test_noise_floor_defaults_and_float64_statistics():
    """Ten replicates by default, each one pair of draws; mean and std in float64 of float32
    distances (a float32 mean would differ in the last digits)."""
    calls = []
    vals = (torch.arange(1, 21, dtype=torch.float32) / 3.0 + 1e-3).tolist()

    def sample_fn(n, gen):
        calls.append(n)
        return torch.zeros(n, 1)

    it = iter(vals)
    floor = noise_floor(sample_fn, 5, lambda a, b: torch.tensor(next(it), dtype=torch.float32))
    assert floor["replicates"] == 10 and calls == [5] * 20
    pairs = torch.tensor(vals[:10], dtype=torch.float32).to(f64)
    assert floor["mean"] == float(pairs.mean()) and floor["std"] == float(pairs.std())
    with pytest.raises(ValueError, match=r"^replicates must be an integer >= 1"):
        noise_floor(sample_fn, 5, lambda a, b: torch.tensor(0.0), replicates=0)


def test_bures_wasserstein_in_float64_from_float32_inputs():
    """The closed form in float64 even from float32 inputs: commuting diagonal covariances give
    |m1 - m2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    a = torch.tensor([0.3, 2.0, 5.0])
    b = torch.tensor([1.1, 0.7, 5.0])
    m1, m2 = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.0, 0.4, 1.0])
    got = bures_wasserstein(m1, torch.diag(a), m2, torch.diag(b))
    a64, b64 = a.to(f64), b.to(f64)
    expected = ((m1.to(f64) - m2.to(f64)).pow(2).sum() + (a64.sqrt() - b64.sqrt()).pow(2).sum()).sqrt()
    assert got.dtype == f64
    assert float(got) == pytest.approx(float(expected), rel=1e-13)


def test_gaussian_w2_to_target_fits_in_float64():
    """The fitted mean and covariance of float32 samples are taken in float64 (torch.cov in float32
    differs in the 7th digit)."""
    gm = make_preset("gaussian16d")
    x = gm.sample(300, torch.Generator().manual_seed(2), dtype=torch.float32)
    x64 = x.to(f64)
    expected = bures_wasserstein(x64.mean(0), torch.cov(x64.T), gm.mean(), gm.covariance())
    got = gaussian_w2_to_target(x, gm)
    assert got.dtype == f64
    assert float(got) == pytest.approx(float(expected), rel=1e-12)


class _Spy:
    """A mixture that records the dtype its posterior is asked in, and has components that no
    sample is assigned to (so the frequencies need `minlength`)."""

    def __init__(self, gm):
        self.gm, self.seen = gm, []
        self.num_components = gm.num_components
        self.weights = gm.weights

    def component_log_posterior(self, x):
        self.seen.append(x.dtype)
        return self.gm.component_log_posterior(x)


def test_mode_weight_error_in_float64_with_empty_components():
    gm = make_preset("ring2d")
    x, labels = gm.sample(400, torch.Generator().manual_seed(1), dtype=torch.float32, return_labels=True)
    keep = labels < 3  # components 3.. get no samples: bincount alone would be too short
    spy = _Spy(gm)
    got = mode_weight_error(x[keep], spy)
    assert spy.seen == [f64] and got.dtype == f64
    assigned = gm.component_log_posterior(x[keep].to(f64)).argmax(1)
    freq = torch.stack([(assigned == k).sum() for k in range(gm.num_components)]).to(f64) / int(keep.sum())
    assert float(got) == pytest.approx(float(0.5 * (freq - gm.weights).abs().sum()), rel=1e-14)
