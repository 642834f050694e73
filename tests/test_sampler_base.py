"""The sampler base class: NFE accounting, seeding, devices and dtypes, time grids."""
import math

import pytest
import torch

from sde_gen import VESDE, VPSDE, make_preset
from sde_gen.metrics import gaussian_w2_to_target
from sde_gen.samplers import SAMPLERS, build_sampler, sample, time_grid

from .conftest import ALL_SDES, DEVICES, SDE_IDS

f64 = torch.float64


@pytest.mark.parametrize("kind", ["uniform", "log_snr", "karras"])
def test_time_grids(sde, kind):
    ts = time_grid(sde, 12, kind)
    assert ts.dtype == f64 and ts.shape == (13,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps
    assert torch.all(ts[1:] < ts[:-1])
    lam = sde.half_log_snr(ts)
    if kind == "uniform":
        torch.testing.assert_close(ts[1:] - ts[:-1], (ts[1] - ts[0]).expand(12))
    elif kind == "log_snr":
        steps = lam[1:] - lam[:-1]
        torch.testing.assert_close(steps, steps[:1].expand(12), rtol=1e-7, atol=1e-9)
    else:
        root = torch.exp(-lam) ** (1 / 7)
        steps = root[1:] - root[:-1]
        torch.testing.assert_close(steps, steps[:1].expand(12), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_reported_equals_score_calls(name):
    sde = VPSDE()
    gm = make_preset("ring2d")
    calls = []

    def counted(x, t):
        calls.append(1)
        return gm.score(x, t, sde)

    for nfe in (5, 12):
        calls.clear()
        res = sample(sde, counted, (16, 2), sampler=name, nfe=nfe, generator=torch.Generator().manual_seed(0))
        assert res.nfe == len(calls) <= nfe


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_reproducible_and_follows_device_dtype(name, device, dtype):
    sde = VPSDE()
    gm = make_preset("ring2d").to(device)
    run = lambda: sample(sde, gm.score_fn(sde), (32, 2), sampler=name, nfe=10,
                         generator=torch.Generator(device=device).manual_seed(3), dtype=dtype).samples
    a, b = run(), run()
    assert a.device.type == device and a.dtype == dtype
    assert torch.equal(a, b)


def test_sampler_options_are_validated():
    with pytest.raises(ValueError, match="sampler"):
        build_sampler("euler")
    with pytest.raises(ValueError, match="nfe"):
        build_sampler("euler_maruyama", nfe=0)
    with pytest.raises(ValueError, match="nfe must be >= 2"):
        build_sampler("euler_maruyama", nfe=1)  # one evaluation goes to denoising
    with pytest.raises(ValueError, match="grid"):
        build_sampler("euler_maruyama", grid="cubic")
    with pytest.raises(ValueError, match="exactly one of shape"):
        build_sampler("euler_maruyama")(VPSDE(), lambda x, t: -x)


def test_callback_sees_every_step():
    seen = []
    res = sample(VESDE(), make_preset("ring2d").score_fn(VESDE()), (8, 2), nfe=11, generator=torch.Generator().manual_seed(0),
                 callback=lambda i, t, x: seen.append((i, float(t), tuple(x.shape))))
    assert [s[0] for s in seen] == list(range(res.num_steps)) and seen[-1][1] == VESDE().eps


@pytest.mark.parametrize("sde", ALL_SDES, ids=SDE_IDS)
def test_euler_maruyama_converges_on_gaussian(sde):
    """Bures-Wasserstein error to the exact 16-D Gaussian falls with NFE (same noise, 4000 samples)."""
    gm = make_preset("gaussian16d")
    errs = []
    for nfe in (10, 40, 160):
        x = sample(sde, gm.score_fn(sde), (4000, 16), nfe=nfe, generator=torch.Generator().manual_seed(0), dtype=f64).samples
        errs.append(float(gaussian_w2_to_target(x, gm)))
    assert errs[0] > errs[1] > errs[2]
    floor = float(gaussian_w2_to_target(gm.sample(4000, torch.Generator().manual_seed(1), dtype=f64), gm))
    assert errs[2] < 2.5 * floor
