"""DDIM latent interpolation: `slerp` against its geometry (end points exact, norm kept for equal norms,
the angle to z0 linear in alpha), and `DDIM.interpolate` on an oracle's exact score: the end points decode
back to the two inputs up to the invert/decode round trip, and the decoded path stays in the data's law."""
import math

import pytest
import torch

from sde_gen import VPSDE, make_preset
from sde_gen.samplers import build_sampler
from sde_gen.samplers.ddim import slerp

f64 = torch.float64


def angle(u, v):
    return torch.arccos(((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))).clamp(-1, 1))


def test_slerp_geometry():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(5, 2, 3, 3, generator=g, dtype=f64), torch.randn(5, 2, 3, 3, generator=g, dtype=f64)
    z1 = z1 / z1.flatten(1).norm(dim=1).view(5, 1, 1, 1) * z0.flatten(1).norm(dim=1).view(5, 1, 1, 1)  # equal norms
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    theta = angle(z0.flatten(1), z1.flatten(1))
    for a in (0.1, 0.5, 0.77):
        z = slerp(z0, z1, a)
        assert z.shape == z0.shape and z.dtype == f64
        assert torch.allclose(z.flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1), rtol=1e-12)
        assert torch.allclose(angle(z.flatten(1), z0.flatten(1)), a * theta, atol=1e-9)
        assert torch.allclose(angle(z.flatten(1), z1.flatten(1)), (1 - a) * theta, atol=1e-9)
        # the linear mix shrinks the norm (cos(theta / 2) at the midpoint); slerp does not
        lin = ((1 - a) * z0 + a * z1).flatten(1).norm(dim=1)
        assert (lin < z.flatten(1).norm(dim=1)).all()
    # per-sample alphas, float32 in and out, and (nearly) parallel end points stay finite: the linear limit
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    z = slerp(z0.float(), z1.float(), alphas)
    assert z.dtype == torch.float32 and torch.allclose(z[0], z0[0].float()) and torch.allclose(z[4], z1[4].float())
    par = slerp(z0, 2 * z0, 0.5)
    assert torch.allclose(par, 1.5 * z0, rtol=1e-9)
    with pytest.raises(ValueError, match="alpha"):
        slerp(z0, z1, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        slerp(z0, z1[:2], 0.5)


def test_interpolate_decodes_the_end_points_back_and_stays_in_the_law():
    sde, oracle = VPSDE(), make_preset("gaussian16d")
    score = oracle.score_fn(sde)
    p_min = oracle.perturbed(sde, sde.eps)  # the law of states at t_min
    g = torch.Generator().manual_seed(1)
    x_a, x_b = p_min.sample(3, g, dtype=f64), p_min.sample(3, g, dtype=f64)
    alphas = torch.linspace(0, 1, 5)
    # the round trip invert -> decode of a first-order solver: its error at the end points halves when
    # the step count doubles (50 -> 100 steps, + the unused denoising step) and is small against the data
    errors = {}
    for steps in (50, 100):
        path = build_sampler("ddim", nfe=steps + 1).interpolate(sde, score, x_a, x_b, alphas)
        assert path.shape == (5, 3, 16)
        errors[steps] = torch.stack([(path[0] - x_a).norm(dim=1), (path[-1] - x_b).norm(dim=1)])
    ratio = errors[50] / errors[100]
    assert ((ratio > 1.7) & (ratio < 2.3)).all(), ratio
    scale = float(oracle.covariance().trace().sqrt())  # the data's norm scale, ~3.5
    assert (errors[100] < 0.06 * scale).all(), errors[100]
    # every decoded point is a typical point of p_{t_min}: its Mahalanobis norm^2 is chi-square(16)
    # in the bulk (the latents keep their norm under slerp, so the decoded points do not collapse to the mean)
    prec = torch.linalg.inv(p_min.covariance())
    r = path.reshape(-1, 16) - p_min.mean()
    m2 = ((r @ prec) * r).sum(1)
    assert ((m2 > 2.0) & (m2 < 45.0)).all(), m2
    with pytest.raises(ValueError, match="eta"):
        build_sampler("ddim", nfe=10, eta=0.5).interpolate(sde, score, x_a, x_b, alphas)
    with pytest.raises(ValueError, match="alphas"):
        build_sampler("ddim", nfe=10).interpolate(sde, score, x_a, x_b, torch.tensor([0.5, 2.0]))
