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


@pytest.mark.slow
def test_classifier_frechet_distance_ranks_a_fitted_model_between_noise_and_data():
    """On digits: held-out data < samples of a model fitted to the data < prior noise, in the
    features of a small classifier trained here (a few hundred steps, ~30 s on 2 cores). The model
    is a single Gaussian fitted by maximum likelihood to the training images, sampled through the
    reverse process with its exact score: right mean and covariance, but no digit shapes."""
    from sde_gen import GaussianMixture, build_dataset, sample
    from sde_gen.losses import NoiseConditionalCrossEntropy

    torch.manual_seed(0)
    data, sde = build_dataset("digits"), VPSDE()
    clf = NoiseConditionalClassifier(UNetClassifier(1, 8, 10, channels=16, channel_mult=(1, 2), attention_resolutions=()), sde)
    opt, g, loss_fn = torch.optim.Adam(clf.parameters(), lr=2e-3), torch.Generator().manual_seed(0), NoiseConditionalCrossEntropy()
    for _ in range(300):
        x, y = data.sample_batch(64, g, return_labels=True)
        t = sde.eps + (0.5 - sde.eps) * torch.rand(64, generator=g)  # small t matter most for t_min features
        loss = loss_fn(clf, sde, x, g, y=y, t=t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (clf(data.test, torch.full((data.test.shape[0],), sde.eps)).argmax(1) == data.test_labels).float().mean()
    assert acc > 0.8, acc

    train = data.train.flatten(1).double()
    fitted = GaussianMixture(torch.ones(1, dtype=torch.float64), train.mean(0, keepdim=True),
                             (torch.cov(train.T) + 1e-3 * torch.eye(64, dtype=torch.float64))[None])
    n = data.test.shape[0]  # equal set sizes, so the finite-sample bias of the distance is shared
    ref = classifier_features(clf, data.train)
    fd = lambda x: float(frechet_distance(ref, classifier_features(clf, x.float())))  # noqa: E731
    d_data = fd(data.test)
    for seed in range(3):
        model = sample(sde, fitted.score_fn(sde), (n, 64), sampler="dpm_solver", nfe=20,
                       generator=torch.Generator().manual_seed(seed)).samples.reshape(n, 1, 8, 8)
        noise = sde.prior_sample((n, 1, 8, 8), torch.Generator().manual_seed(100 + seed))
        d_model, d_noise = fd(model), fd(noise)
        assert 2 * d_data < d_model < d_noise / 2, (d_data, d_model, d_noise)
