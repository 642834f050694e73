"""Class labels of the datasets: each label is checked against the geometry or the source that
defines it (independently of how the dataset draws it), and asking for labels never changes x."""
import math

import pytest
import torch

from sde_gen.data import Checkerboard, Circles, Digits, ImageDataset, Ring2D, SwissRoll, TwoMoons, build_dataset
from sde_gen.oracles import GaussianMixture, make_preset

LABELLED_TOYS = [TwoMoons, Circles, Checkerboard]


@pytest.mark.parametrize("cls", LABELLED_TOYS + [SwissRoll, Ring2D])
def test_labels_do_not_change_x(cls):
    data = cls(num_test=10)
    x_only = data.sample_batch(256, torch.Generator().manual_seed(3))
    if not data.labelled:
        with pytest.raises(ValueError, match="data: 'swiss_roll' has no class labels"):
            data.sample_batch(4, torch.Generator(), return_labels=True)
        return
    x, y = data.sample_batch(256, torch.Generator().manual_seed(3), return_labels=True)
    assert torch.equal(x, x_only)
    assert y.dtype == torch.long and y.shape == (256,)
    assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
    assert data.test_labels.shape == (10,)


def test_moons_label_is_the_moon_the_point_lies_on():
    data = TwoMoons(noise=0.0, num_test=10)
    x, y = data.sample_batch(2000, torch.Generator().manual_seed(0), return_labels=True)
    u = 0.87 * x[:, 0].double() + 0.5  # undo the scaling
    v = 0.5 * x[:, 1].double() + 0.25
    on_upper = (torch.hypot(u, v) - 1).abs() < 1e-5
    on_lower = (torch.hypot(u - 1, v - 0.5) - 1).abs() < 1e-5
    assert torch.equal(on_upper & ~on_lower, (y == 0) & ~on_lower)
    assert bool((on_upper | on_lower).all())
    assert bool(on_upper[y == 0].all()) and bool(on_lower[y == 1].all())
    # the two moons are equally likely: within 4 standard errors of 1/2
    share = (y == 0).double().mean()
    assert abs(float(share) - 0.5) < 4 * math.sqrt(0.25 / 2000)


def test_circles_label_is_the_radius():
    data = Circles(noise=0.0, num_test=10)
    x, y = data.sample_batch(1000, torch.Generator().manual_seed(1), return_labels=True)
    radius = x.double().norm(dim=1)
    assert torch.allclose(radius, 1.0 + y.double(), atol=1e-5)


def test_checkerboard_label_is_the_dark_square():
    data = Checkerboard(num_test=10)
    x, y = data.sample_batch(4000, torch.Generator().manual_seed(2), return_labels=True)
    col = torch.floor(x[:, 0].double() + 2)
    row = torch.floor(x[:, 1].double() + 2)
    assert bool((torch.remainder(col + row, 2) == 0).all())  # dark squares only
    assert torch.equal(y, (2 * col + torch.div(row, 2, rounding_mode="floor")).long())
    assert torch.equal(torch.unique(y), torch.arange(8))


def test_oracle_label_is_the_class_of_the_component():
    data = Ring2D(num_test=10)
    g = torch.Generator().manual_seed(4)
    x, y = data.sample_batch(20000, g, return_labels=True)
    x_ref, comp = data.oracle.sample(20000, torch.Generator().manual_seed(4), dtype=torch.float32, return_labels=True)
    assert torch.equal(x, x_ref) and torch.equal(y, comp)  # ring2d: one class per component
    assert data.num_classes == 8
    w = data.oracle.weights
    freq = torch.bincount(y, minlength=8).double() / y.numel()
    assert bool(((freq - w).abs() < 4 * (w * (1 - w) / y.numel()).sqrt()).all())


@pytest.mark.parametrize("name, classes", [("ring2d", 8), ("mixture64d", 4), ("gaussian16d", 1)])
def test_preset_class_counts(name, classes):
    assert build_dataset(name, num_test=4).num_classes == classes
    assert make_preset(name).num_classes == classes


def test_shared_classes_map_and_validation():
    gm = GaussianMixture([0.25, 0.25, 0.5], [[0.0], [1.0], [5.0]], [[1.0], [1.0], [1.0]], classes=[1, 1, 0])
    assert gm.num_classes == 2
    assert gm.perturbed(__import__("sde_gen").sdes.VPSDE(), 0.5).classes.tolist() == [1, 1, 0]
    for bad in ([0, 2, 2], [0, 1], [0.0, 1.0, 1.0], [-1, 0, 1]):
        with pytest.raises(ValueError, match="classes"):
            GaussianMixture([0.25, 0.25, 0.5], [[0.0], [1.0], [5.0]], [[1.0], [1.0], [1.0]], classes=bad)


def test_image_labels_follow_the_drawn_images():
    px = torch.randint(0, 4, (50, 1, 2, 2))
    labels = torch.arange(50) % 3
    data = ImageDataset(px, px[:5], 4, labels, labels[:5], num_classes=3)
    x, y = data.sample_batch(64, torch.Generator().manual_seed(0), return_labels=True)
    idx = torch.randint(50, (64,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, data.train[idx]) and torch.equal(y, labels[idx])
    unlabelled = ImageDataset(px, px[:5], 4)
    with pytest.raises(ValueError, match="has no class labels"):
        unlabelled.sample_batch(2, return_labels=True)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 1\]"):
        ImageDataset(px, px[:5], 4, labels, labels[:5], num_classes=2)
    with pytest.raises(ValueError, match="together"):
        ImageDataset(px, px[:5], 4, labels, None, num_classes=3)


def test_digits_labels_are_sklearns():
    sk = pytest.importorskip("sklearn.datasets")
    bunch = sk.load_digits()
    data = Digits()
    x, y = data.sample_batch(32, torch.Generator().manual_seed(0), return_labels=True)
    images = torch.as_tensor(bunch.images, dtype=torch.float32)
    for xi, yi in zip(data.to_pixels(x) - 0.5, y):  # bin centres back to the integer pixels
        match = (images - xi[0].round()).abs().flatten(1).sum(1) == 0
        assert int(yi) in set(torch.as_tensor(bunch.target)[match].tolist())
