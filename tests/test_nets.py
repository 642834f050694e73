"""Networks: frozen Fourier features, backbone shapes, label token, and the score parameterisation
checked against the independent formulas of `sde_gen.parameterization`-free algebra."""
import math

import pytest
import torch

from sde_gen import VESDE, VPSDE
from sde_gen.nets import MLP, GaussianFourierFeatures, ScoreModel, TimeEmbedding, UNet


def test_fourier_features_are_frozen_shaped_and_deterministic():
    ff = GaussianFourierFeatures(embed_dim=16, scale=3.0, seed=5)
    assert list(ff.parameters()) == []  # a buffer: the optimiser never sees it
    assert "omega" in ff.state_dict()
    t = torch.rand(7, requires_grad=False)
    out = ff(t)
    assert out.shape == (7, 16)
    # the definition, recomputed: [sin(2 pi w t), cos(2 pi w t)]
    w = ff.omega
    ref = torch.cat([torch.sin(2 * math.pi * t[:, None] * w), torch.cos(2 * math.pi * t[:, None] * w)], 1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(GaussianFourierFeatures(16, 3.0, seed=5).omega, w)
    assert not torch.equal(GaussianFourierFeatures(16, 3.0, seed=6).omega, w)
    # the frequencies have the requested scale (64k draws: std within 2 %)
    big = GaussianFourierFeatures(2 * 65536, scale=3.0)
    assert abs(float(big.omega.std()) / 3.0 - 1) < 0.02
    # no gradient reaches omega even when the input needs one
    t2 = torch.rand(3, requires_grad=True)
    ff(t2).sum().backward()
    assert t2.grad is not None and not ff.omega.requires_grad


def test_fourier_features_reject_odd_width():
    with pytest.raises(ValueError, match="embed_dim"):
        GaussianFourierFeatures(embed_dim=5)


def test_label_embedding_has_a_no_label_token():
    emb = TimeEmbedding(8, num_classes=3)
    assert emb.label.num_embeddings == 4
    t = torch.rand(2)
    null = torch.full((2,), 3, dtype=torch.long)
    torch.testing.assert_close(emb(t), emb(t, null))
    assert not torch.allclose(emb(t, torch.tensor([0, 1])), emb(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_shapes_and_dtype(dtype):
    net = MLP(dim=6, hidden=32, depth=2, time_embed_dim=16, num_classes=4).to(dtype)
    x = torch.randn(5, 6, dtype=dtype)
    out = net(x, torch.rand(5, dtype=dtype), torch.tensor([0, 1, 2, 3, 4]))
    assert out.shape == x.shape and out.dtype == dtype
    # image-shaped input with the same number of values is flattened and restored
    assert net(torch.randn(5, 1, 2, 3, dtype=dtype), torch.rand(5, dtype=dtype)).shape == (5, 1, 2, 3)
    with pytest.raises(ValueError, match="6 values"):
        net(torch.randn(5, 4, dtype=dtype), torch.rand(5, dtype=dtype))


@pytest.mark.parametrize("size, mult", [(8, (1, 2)), (28, (1, 2, 2))])
def test_unet_shapes_zero_start_and_gradients(size, mult):
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=8, channel_mult=mult, attention_resolutions=(size // 2,), image_size=size, num_classes=10)
    x = torch.randn(2, 1, size, size)
    t = torch.rand(2)
    out = net(x, t, torch.tensor([1, 10]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    # after moving the output layer off zero, every parameter receives a gradient
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    net(x, t, torch.tensor([1, 10])).pow(2).sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == [] or all("label" in n for n in no_grad)


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="image_size"):
        UNet(in_channels=1, channel_mult=(1, 2, 2), image_size=10)


class _Affine(torch.nn.Module):
    """A backbone with a known output: F(u, t) = 2 u + t, to check the wrapper's algebra."""

    def forward(self, x, t, y=None):
        return 2 * x + t[:, None]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_score_model_parameterisation(sde):
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 1.0], dtype=torch.float64)
    model = ScoreModel(_Affine(), sde, data_std=0.7)
    a, s = (c[:, None] for c in sde.marginal_coeffs(t))
    c_in = 1 / torch.sqrt(a ** 2 * 0.7 ** 2 + s ** 2)
    score = (2 * c_in * x + t[:, None]) / s
    torch.testing.assert_close(model(x, t), score)
    torch.testing.assert_close(model.eps(x, t), -s * score)  # the network predicts -noise
    torch.testing.assert_close(model.x0(x, t), (x + s ** 2 * score) / a)  # Tweedie
