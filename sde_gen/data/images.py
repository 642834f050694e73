"""Image datasets: scikit-learn's 8x8 digits, MNIST (idx files) and CIFAR-10 (binary batches).

Pixel convention (used by training, sampling and bits/dim):

    integer pixels   k in {0, ..., L - 1}            (L = num_levels: 256 for 8-bit data, 17 for digits)
    pixel units      v in [0, L)                     (v = k + u after uniform dequantisation u ~ U[0, 1))
    model space      x = to_model(v) = 2 v / L - 1   in [-1, 1)
    Jacobian         model_per_pixel = dx/dv = 2 / L (the same for every pixel)

Training data are the bin centres x = to_model(k + 1/2). A density p_x in model space gives the
dequantised density p_v(v) = p_x(to_model(v)) (2/L)^D, so
    -log2 P(k) <= E_u[-log2 p_x(to_model(k + u))] - D log2(model_per_pixel)
is a true bound on the discrete negative log-likelihood in bits (Theis et al. 2016; Ho et al. 2019).

The digits of `sklearn.datasets.load_digits` take the 17 values 0..16. Rescaling them to 0..255
would invent 239 empty levels and break the bound above, so the digits keep their 17 levels:
`num_levels = 17` and `num_bits = None` (17 is not a power of two); use `num_levels` in
likelihood code. MNIST and CIFAR-10 are 8-bit: `num_bits = 8`, `num_levels = 256`.

MNIST and CIFAR-10 are read from local files only (no download, no torchvision); a missing file
raises `FileNotFoundError` naming every file that is needed.
"""
from __future__ import annotations

import gzip
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from .._validation import check_in_open_interval, check_positive_int
from .base import Dataset

__all__ = ["ImageDataset", "Digits", "MNIST", "CIFAR10", "read_idx", "read_cifar_batch"]


class ImageDataset(Dataset):
    """A finite image dataset from integer pixel arrays.

    Args:
        train_pixels, test_pixels: (N, C, H, W) integer tensors with values in [0, num_levels).
        num_levels: number of intensity levels L.
        train_labels, test_labels: optional (N,) class labels.
        num_classes: number of classes when labels are given.
    """

    def __init__(
        self,
        train_pixels: torch.Tensor,
        test_pixels: torch.Tensor,
        num_levels: int,
        train_labels: Optional[torch.Tensor] = None,
        test_labels: Optional[torch.Tensor] = None,
        num_classes: Optional[int] = None,
    ):
        self.num_levels = check_positive_int("num_levels", num_levels)
        bits = num_levels.bit_length() - 1
        self.num_bits = bits if 2 ** bits == num_levels else None
        for name, px in (("train_pixels", train_pixels), ("test_pixels", test_pixels)):
            if px.ndim != 4 or px.numel() == 0:
                raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor; got shape {tuple(px.shape)}")
            if int(px.min()) < 0 or int(px.max()) >= num_levels:
                raise ValueError(f"{name} values must lie in [0, {num_levels - 1}]")
        self.event_shape = tuple(train_pixels.shape[1:])
        self.train_pixels = train_pixels.to(torch.uint8 if num_levels <= 256 else torch.long)
        self.test_pixels = test_pixels.to(self.train_pixels.dtype)
        self.model_per_pixel = 2.0 / num_levels
        self.train = self.to_model(self.train_pixels.float() + 0.5)
        self.test = self.to_model(self.test_pixels.float() + 0.5)
        if (train_labels is None) != (num_classes is None) or (test_labels is None) != (num_classes is None):
            raise ValueError("train_labels, test_labels and num_classes must be given together or not at all")
        if num_classes is not None:
            num_classes = check_positive_int("num_classes", num_classes)
            for name, lab, px in (("train_labels", train_labels, train_pixels), ("test_labels", test_labels, test_pixels)):
                lab = torch.as_tensor(lab)
                if lab.shape != px.shape[:1] or lab.is_floating_point():
                    raise ValueError(f"{name} must be ({px.shape[0]},) integer labels; got shape {tuple(lab.shape)}, dtype {lab.dtype}")
                if int(lab.min()) < 0 or int(lab.max()) >= num_classes:
                    raise ValueError(f"{name} must lie in [0, {num_classes - 1}] (num_classes={num_classes})")
            train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
        self.train_labels, self.test_labels, self.num_classes = train_labels, test_labels, num_classes

    def to_model(self, v: torch.Tensor) -> torch.Tensor:
        """Pixel units v in [0, L) -> model space x = 2 v / L - 1."""
        return v * self.model_per_pixel - 1.0

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> continuous pixel units (the inverse of `to_model`)."""
        return (x + 1.0) / self.model_per_pixel

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> the nearest integer pixel value, clamped to [0, L - 1] (for display)."""
        return self.to_pixels(x).floor().clamp(0, self.num_levels - 1).long()

    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        n = check_positive_int("batch_size", batch_size)
        if return_labels:
            self.check_labelled()
        device = generator.device if generator is not None else None
        idx = torch.randint(self.train.shape[0], (n,), generator=generator, device=device).cpu()
        x = self.train[idx].to(device)
        return (x, self.train_labels[idx].to(device)) if return_labels else x


def _split(n: int, test_fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A deterministic random train/test split of range(n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_test = max(1, int(round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


class Digits(ImageDataset):
    """The 1,797 8x8 handwritten digits shipped with scikit-learn (17 levels, 0..16).

    Args:
        test_fraction: share of the images held out (deterministic split).
        seed: seed of the split.
    """

    name = "digits"

    def __init__(self, test_fraction: float = 0.2, seed: int = 0):
        check_in_open_interval("test_fraction", test_fraction, 0.0, 1.0)
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:  # scikit-learn is an optional extra
            raise ImportError(
                "the digits dataset needs scikit-learn: pip install 'sde_gen[data]' (or scikit-learn)"
            ) from err
        bunch = load_digits()
        pixels = torch.as_tensor(bunch.images, dtype=torch.long).reshape(-1, 1, 8, 8)
        labels = torch.as_tensor(bunch.target, dtype=torch.long)
        tr, te = _split(pixels.shape[0], test_fraction, seed)
        super().__init__(pixels[tr], pixels[te], 17, labels[tr], labels[te], num_classes=10)


# ---- MNIST: idx files (LeCun et al. 1998) ----
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed): magic 0 0 <type> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path} is truncated or corrupt: header says {dims}, found {len(raw) - offset} data bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def _find(data_dir: str, names: List[str], dataset: str, subdirs=("",)) -> List[str]:
    """Resolve each file name (plain or .gz) in data_dir (or a listed sub-directory)."""
    found, missing = [], []
    for name in names:
        hit = None
        for sub in subdirs:
            for candidate in (name, name + ".gz"):
                path = os.path.join(data_dir, sub, candidate)
                if os.path.isfile(path):
                    hit = hit or path
        (found if hit else missing).append(hit or name)
    if missing:
        raise FileNotFoundError(
            f"{dataset}: missing file(s) {missing} in data_dir={data_dir!r}"
            + (f" (also looked in {[os.path.join(data_dir, s) for s in subdirs if s]})" if len(subdirs) > 1 else "")
            + f"; place the original files there (no download is done at run time). Needed: {names}"
        )
    return found


class MNIST(ImageDataset):
    """MNIST from the four original idx files in `data_dir` (28x28, 8-bit, 60,000 + 10,000).

    Args:
        data_dir: folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz).
    """

    name = "mnist"
    FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

    def __init__(self, data_dir: str = "data/mnist"):
        paths = _find(os.path.expanduser(data_dir), self.FILES, "mnist", subdirs=("", "MNIST/raw", "raw"))
        arrays = [read_idx(p) for p in paths]
        tr_x, tr_y, te_x, te_y = (torch.as_tensor(a.astype(np.int64)) for a in arrays)
        for path, x, y in ((paths[0], tr_x, tr_y), (paths[2], te_x, te_y)):
            if x.ndim != 3 or y.shape != x.shape[:1]:
                raise ValueError(f"{path}: expected (N, H, W) images matching the labels; got {tuple(x.shape)} and {tuple(y.shape)}")
        super().__init__(tr_x[:, None], te_x[:, None], 256, tr_y, te_y, num_classes=10)


# ---- CIFAR-10: binary batches (Krizhevsky 2009): records of 1 label byte + 3 x 32 x 32 bytes ----
def read_cifar_batch(path: str, image_size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 binary batch -> ((N, 3, 32, 32) uint8 images, (N,) labels)."""
    rec = 1 + 3 * image_size * image_size
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % rec:
        raise ValueError(f"{path} is truncated or corrupt: {raw.size} bytes is not a multiple of the record size {rec}")
    raw = raw.reshape(-1, rec)
    labels = torch.as_tensor(raw[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise ValueError(f"{path} is corrupt: label {int(labels.max())} outside 0..9")
    images = torch.as_tensor(raw[:, 1:].reshape(-1, 3, image_size, image_size).copy())
    return images, labels


class CIFAR10(ImageDataset):
    """CIFAR-10 from the binary version's batches in `data_dir` (32x32x3, 8-bit, 50,000 + 10,000).

    Args:
        data_dir: folder (or its `cifar-10-batches-bin` sub-folder) holding data_batch_1.bin ..
            data_batch_5.bin and test_batch.bin.
    """

    name = "cifar10"
    FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]

    def __init__(self, data_dir: str = "data/cifar10"):
        paths = _find(os.path.expanduser(data_dir), self.FILES, "cifar10", subdirs=("", "cifar-10-batches-bin"))
        parts = [read_cifar_batch(p) for p in paths]
        tr_x = torch.cat([p[0] for p in parts[:5]])
        tr_y = torch.cat([p[1] for p in parts[:5]])
        super().__init__(tr_x, parts[5][0], 256, tr_y, parts[5][1], num_classes=10)
