"""Datasets: the shared interface, exact oracle data, toys, the pixel <-> model maps, and the
MNIST / CIFAR-10 readers on small synthetic files written in the official formats."""
import os
import struct

import numpy as np
import pytest
import torch

from sde_gen.data import CIFAR10, DATASETS, MNIST, Digits, build_dataset, read_idx
from sde_gen.metrics import sliced_wasserstein

FILE_BASED = {"mnist", "cifar10", "image_folder"}


@pytest.mark.parametrize("name", sorted(set(DATASETS) - FILE_BASED))
def test_dataset_interface(name):
    data = build_dataset(name)
    g = torch.Generator().manual_seed(0)
    x = data.sample_batch(64, g)
    assert x.shape == (64, *data.event_shape) and x.dtype == torch.float32
    assert data.test.dtype == torch.float32 and data.test.shape[1:] == tuple(data.event_shape)
    assert torch.isfinite(data.test).all()
    # reproducible under a seed, different across draws
    torch.testing.assert_close(data.sample_batch(64, torch.Generator().manual_seed(0)), x)
    assert not torch.equal(data.sample_batch(64, g), x)
    assert (data.oracle is not None) == (name in ("ring2d", "mixture64d", "gaussian16d"))
    # the training stream and the held-out set come from the same distribution
    train = data.sample_batch(2000, g)
    held = data.test[:2000]
    sw = float(sliced_wasserstein(train, held, 200, generator=torch.Generator().manual_seed(1)))
    shift = float(sliced_wasserstein(train + 0.5, held, 200, generator=torch.Generator().manual_seed(1)))
    assert sw < 0.3 * shift


def test_oracle_dataset_draws_from_its_oracle():
    data = build_dataset("gaussian16d")
    x = data.sample_batch(20000, torch.Generator().manual_seed(3)).double()
    cov = data.oracle.covariance()
    err = (torch.cov(x.T) - cov).abs().max() / cov.diagonal().max()
    assert float(err) < 5 * (2 / 20000) ** 0.5 * 3
    assert float((x.mean(0) - data.oracle.mean()).abs().max()) < 5 * float(cov.diagonal().max().sqrt()) / 20000 ** 0.5


def test_checkerboard_occupies_only_dark_squares():
    x = build_dataset("checkerboard").test.double()
    col, row = torch.floor(x[:, 0] + 2), torch.floor(x[:, 1] + 2)
    assert torch.all(torch.remainder(col + row, 2) == 0)
    assert x.abs().max() <= 2


def test_digits_pixel_maps_and_split():
    data = Digits()
    assert data.event_shape == (1, 8, 8) and data.num_levels == 17 and data.num_bits is None
    assert data.train.shape[0] + data.test.shape[0] == 1797
    assert int(data.test_pixels.max()) == 16 and int(data.test_pixels.min()) == 0
    # deterministic split, disjoint train and test
    again = Digits()
    torch.testing.assert_close(again.test_pixels, data.test_pixels)
    # training data are bin centres in [-1, 1]
    k = data.test_pixels.double()
    torch.testing.assert_close(data.test.double(), 2 * (k + 0.5) / 17 - 1, rtol=0, atol=1e-6)
    # inverse and Jacobian: to_pixels(to_model(v)) = v and dx/dv = model_per_pixel (autograd)
    v = torch.rand(10, dtype=torch.float64) * 17
    torch.testing.assert_close(data.to_pixels(data.to_model(v)), v)
    v.requires_grad_(True)
    (grad,) = torch.autograd.grad(data.to_model(v).sum(), v)
    torch.testing.assert_close(grad, torch.full_like(v, data.model_per_pixel))
    assert data.to_model(torch.tensor(0.0)) == -1 and data.to_model(torch.tensor(17.0)) == 1
    torch.testing.assert_close(data.quantize(data.test), data.test_pixels.long())


def _write_idx(path, array, type_code=0x08):
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, type_code, array.ndim]))
        for d in array.shape:
            fh.write(struct.pack(">I", d))
        fh.write(array.astype(np.uint8).tobytes())


def test_mnist_reader_on_synthetic_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, size=(12, 28, 28))
    te = rng.integers(0, 256, size=(5, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte", tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, size=12))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=5))
    data = MNIST(str(tmp_path))
    assert data.event_shape == (1, 28, 28) and data.num_bits == 8 and data.num_levels == 256
    np.testing.assert_array_equal(data.test_pixels[:, 0].numpy(), te)
    torch.testing.assert_close(data.test, torch.as_tensor((te[:, None] + 0.5) / 128 - 1, dtype=torch.float32))
    assert data.model_per_pixel == 2 / 256
    batch = data.sample_batch(4, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 1, 28, 28)
    # a truncated file is reported by name
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        read_idx(str(tmp_path / "t10k-images-idx3-ubyte"))


def test_mnist_missing_files_named(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28)))
    with pytest.raises(FileNotFoundError) as info:
        MNIST(str(tmp_path))
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg and str(tmp_path) in msg


def test_cifar10_reader_on_synthetic_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 3
        img = rng.integers(0, 256, size=(n, 3, 32, 32))
        lab = rng.integers(0, 10, size=n)
        rec = np.concatenate([lab[:, None], img.reshape(n, -1)], axis=1).astype(np.uint8)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
        images[name] = (img, lab)
    data = CIFAR10(str(tmp_path))
    assert data.event_shape == (3, 32, 32) and data.train.shape[0] == 15 and data.num_bits == 8
    np.testing.assert_array_equal(data.test_pixels.numpy(), images["test_batch"][0])
    np.testing.assert_array_equal(data.test_labels.numpy(), images["test_batch"][1])
    np.testing.assert_array_equal(data.train_pixels[3:6].numpy(), images["data_batch_2"][0])
    os.remove(folder / "data_batch_3.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        CIFAR10(str(tmp_path))
