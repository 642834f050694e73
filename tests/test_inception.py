"""Inception FID/KID (issue 14, item 1): the TensorFlow-1 resize against a per-pixel loop, the
network's grid sizes against Table 1 of Szegedy et al. 2016, the weights file's loading and its
one-line errors, torch-fidelity's extractor with the same random weights (where that package is
importable), FID of a set with itself ~0, of two halves small and of shifted data large, and the
reference-statistics cache."""
import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch

from sde_gen.inception import (
    WEIGHTS_FILE_NAME,
    FIDInceptionV3,
    inception_features,
    load_inception,
    reference_statistics,
    resize_bilinear_tf1,
    to_uint8_pixels,
)
from sde_gen.metrics import frechet_distance, frechet_distance_from_statistics


def _random_net(resize=75, seed=0):
    """Random weights with non-trivial batch-norm statistics (the identity ones would hide a mix-up)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3(resize=resize)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def net():
    return _random_net()


@pytest.mark.parametrize("h,w,size", [(5, 7, 11), (9, 4, 3), (6, 6, 6), (1, 3, 4)])
def test_resize_matches_a_per_pixel_loop(h, w, size):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 255
    got = resize_bilinear_tf1(x, size)
    want = torch.empty(2, 3, size, size, dtype=torch.float64)
    for i in range(size):
        y = i * h / size
        y0, fy = int(y), y - int(y)
        y1 = min(y0 + 1, h - 1)
        for j in range(size):
            xx = j * w / size
            x0, fx = int(xx), xx - int(xx)
            x1 = min(x0 + 1, w - 1)
            top = x[..., y0, x0] * (1 - fx) + x[..., y0, x1] * fx
            bottom = x[..., y1, x0] * (1 - fx) + x[..., y1, x1] * fx
            want[..., i, j] = top * (1 - fy) + bottom * fy
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # float32 positions, as TensorFlow's kernel
    if (h, w) == (size, size):
        torch.testing.assert_close(got, x)


def test_uint8_quantisation_ends():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert to_uint8_pixels(x).tolist() == [0.0, 0.0, 128.0, 255.0, 255.0]


@pytest.mark.slow
def test_grid_sizes_follow_table_1_of_the_paper():
    """At 299 x 299: 35x35x288 after the A blocks, 17x17x768 after the C blocks, 8x8x2048 at the end."""
    net = FIDInceptionV3(resize=299).eval()
    seen = {}
    for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        f = net(torch.full((1, 3, 20, 20), 100.0))
    assert seen == {"Mixed_5d": (288, 35, 35), "Mixed_6e": (768, 17, 17), "Mixed_7c": (2048, 8, 8)}
    assert f.shape == (1, 2048) and torch.isfinite(f).all()
    assert net.fc.weight.shape == (1008, 2048)


def test_too_small_resize_is_refused():
    with pytest.raises(ValueError, match="resize must be >= 75"):
        FIDInceptionV3(resize=64)


def test_missing_weights_file_names_the_file_and_the_option(tmp_path):
    with pytest.raises(ValueError) as err:
        load_inception(str(tmp_path / "nope.pth"))
    msg = str(err.value)
    assert WEIGHTS_FILE_NAME in msg and "inception.weights=" in msg and "nothing is downloaded" in msg
    with pytest.raises(ValueError, match="no file at None"):
        load_inception(None)


def test_wrong_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not the FID Inception-v3 state dict"):
        load_inception(str(path))
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_inception(str(tmp_path / "junk.pth"))


def test_weights_round_trip_gives_identical_features(net, tmp_path):
    # without the batch-norm step counters, as converted files may come (with them it loads too)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / WEIGHTS_FILE_NAME)
    loaded = load_inception(str(tmp_path / WEIGHTS_FILE_NAME), resize=75)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(inception_features(loaded, x), inception_features(net, x), rtol=0, atol=0)


def test_gray_images_are_read_as_three_equal_channels(net):
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(inception_features(net, x), inception_features(net, x.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        inception_features(net, torch.zeros(2, 2, 8, 8))


def _torch_fidelity_extractor():
    """torch-fidelity's Inception module, imported without its package `__init__` (which imports
    torchvision for its other extractors); skipped where torch-fidelity is not installed."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity to run this check)")
    saved = {k: v for k, v in sys.modules.items() if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    finally:
        for k in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.slow
def test_same_features_as_torch_fidelity_with_the_same_random_weights(tmp_path):
    module = _torch_fidelity_extractor()
    ours = _random_net(resize=299, seed=3)
    torch.save(ours.state_dict(), tmp_path / "w.pth")
    theirs = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(tmp_path / "w.pth"))
    pixels = torch.randint(0, 256, (2, 3, 21, 13), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    with torch.no_grad():
        want = theirs(pixels)[0]
        got = ours(pixels.float())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digit_features(net):
    from sde_gen import build_dataset

    test = build_dataset("digits").test[:64]
    shifted = (test + 0.8).clamp(-1, 1)  # brighter strokes and background
    return inception_features(net, test), inception_features(net, shifted)


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero_halves_small_shift_large(digit_features):
    f, f_shift = digit_features
    same = float(frechet_distance(f, f))
    halves = float(frechet_distance(f[:32], f[32:]))
    shifted = float(frechet_distance(f[:32], f_shift[32:]))
    scale = float(torch.trace(torch.cov(f.T)))  # the total variance: the size of the feature cloud
    assert same <= 1e-9 * scale
    assert 0 < halves < shifted / 5, (halves, shifted)


def test_statistics_form_refuses_bad_shapes():
    with pytest.raises(ValueError, match="cov_b must have shape"):
        frechet_distance_from_statistics(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))


class _TinyFeatures(torch.nn.Module):
    """A stand-in with the interface `reference_statistics` uses (`resize`, `fc`, forward on pixels):
    the cache logic does not depend on the network, and this one runs in microseconds."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.resize = 75
        self.fc = torch.nn.Linear(3, 4)
        self.calls = 0

    def forward(self, px):
        self.calls += px.shape[0]
        return self.fc(px.mean((2, 3)) / 255)


def test_gram_form_of_the_cross_term_equals_the_covariance_form():
    """Few rows (N < D): the nuclear-norm form; compared with the D x D square-root form."""
    g = torch.Generator().manual_seed(6)
    a = torch.randn(7, 40, generator=g, dtype=torch.float64)
    b = torch.randn(9, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g, dtype=torch.float64) + 0.3
    want = frechet_distance_from_statistics(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    # the D x D form loses ~1e-9 relative where it takes roots of round-off-sized eigenvalues
    assert float(frechet_distance(a, b)) == pytest.approx(float(want), rel=1e-7)
    assert float(frechet_distance(a, a)) == pytest.approx(0.0, abs=1e-10)


def test_reference_statistics_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    net = _TinyFeatures()
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    first, cached = reference_statistics(net, images, name="digits", cache_dir=str(tmp_path), batch_size=4, kid_rows=5)
    assert not cached and net.calls == 6
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("digits-")
    feats = inception_features(net, images)
    torch.testing.assert_close(first["mu"], feats.mean(0))
    torch.testing.assert_close(first["cov"], torch.cov(feats.T))
    torch.testing.assert_close(first["features"], feats[:5])
    net.calls = 0
    again, cached = reference_statistics(net, images, name="digits", cache_dir=str(tmp_path), batch_size=4, kid_rows=5)
    assert cached and net.calls == 0
    for k in first:
        torch.testing.assert_close(again[k], first[k])
    # another data set, or other weights, gets its own file
    _, cached = reference_statistics(net, images.flip(0)[:5], name="digits", cache_dir=str(tmp_path), kid_rows=5)
    assert not cached and len(os.listdir(tmp_path)) == 2
    _, cached = reference_statistics(_TinyFeatures(seed=9), images, name="digits", cache_dir=str(tmp_path), kid_rows=5)
    assert not cached and len(os.listdir(tmp_path)) == 3
    # a damaged cache file is recomputed
    for name in os.listdir(tmp_path):
        (tmp_path / name).write_bytes(b"broken")
    stats, cached = reference_statistics(net, images, name="digits", cache_dir=str(tmp_path), kid_rows=5)
    assert not cached
    torch.testing.assert_close(stats["mu"], first["mu"])
    # cache_dir="" computes without writing
    empty = tmp_path / "none"
    empty.mkdir()
    monkeypatch.chdir(empty)
    _, cached = reference_statistics(net, images, cache_dir="", kid_rows=5)
    assert not cached and os.listdir(empty) == []
