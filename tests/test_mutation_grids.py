"""Checks of `time_grid` written against the mutants that the older grid tests let live
(docs/testing.md, "Mutation testing"): the default kind, an explicit t_max, the end-point checks
and error messages naming the field, and the grid placed on the requested device."""
import pytest
import torch

from sde_gen.samplers import build_sampler
from sde_gen.samplers.grids import GRIDS, time_grid

from .conftest import ALL_SDES_T

f64 = torch.float64


def test_default_kind_is_uniform_and_t_max_is_honoured():
    sde = ALL_SDES_T[0]
    ts = time_grid(sde, 4)
    torch.testing.assert_close(ts, torch.linspace(sde.T, sde.eps, 5, dtype=f64), rtol=1e-15, atol=1e-15)
    ts = time_grid(sde, 4, t_max=0.5)
    assert ts.dtype == f64 and float(ts[0]) == 0.5 and float(ts[-1]) == sde.eps
    torch.testing.assert_close(ts, torch.linspace(0.5, sde.eps, 5, dtype=f64), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("kind", GRIDS)
def test_grid_lives_on_the_requested_device(kind):
    sde = ALL_SDES_T[0]
    # "optimized" looks up a stored grid of a sampler: the table's 3-step deis grid on this VP SDE
    sampler = build_sampler("deis", nfe=3) if kind == "optimized" else None
    assert time_grid(sde, 3, kind, device="meta", sampler=sampler).device.type == "meta"


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="linear"), r"^grid must be one of \['uniform', 'log_snr', 'karras', 'optimized'\]"),
    (dict(num_steps=0), r"^num_steps must be an integer >= 1"),
    (dict(rho=0.0), r"^rho must be > 0"),
    (dict(t_max=0.5, t_min=0.5), r"^t_min and t_max must satisfy 0 < t_min < t_max <= T=1\.0; got t_min=0\.5, t_max=0\.5$"),
    (dict(t_max=1.5), r"^t_min and t_max must satisfy 0 < t_min < t_max <= T=1\.0; got t_min=0\.001, t_max=1\.5$"),
])
def test_errors_name_the_field(kwargs, message):
    args = dict(num_steps=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        time_grid(ALL_SDES_T[0], **args)
