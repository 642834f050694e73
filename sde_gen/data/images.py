"""Image datasets: scikit-learn's 8x8 digits, MNIST (idx files), CIFAR-10 (binary or python
batches) and a generic image folder (one sub-folder per class).

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

MNIST, CIFAR-10 and image folders are read from local files only (no download, no torchvision);
a missing `data_dir` or file raises `FileNotFoundError` naming what is needed, a folder in no known
layout raises `ValueError` naming the layouts looked for.

Training batches (`ImageDataset.sample_batch`): uniform indices with replacement drawn by the
training generator, gathered from a copy of the training set kept on the generator's device (made
once, so a GPU run copies no batch from the host), then, with `hflip=True`, each image mirrored
left-right with probability 1/2 (one more draw of B uniforms from the same generator; the random
flip of DDPM / score_sde's CIFAR-10 training). The alternative pipeline, a `torch.utils.data.DataLoader`
over seeded epoch permutations (`train.loader=dataloader`), is `sde_gen.data.loader`.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .._validation import check_in_open_interval, check_positive_int
from .base import Dataset

__all__ = ["ImageDataset", "Digits", "MNIST", "CIFAR10", "ImageFolder", "read_idx", "read_cifar_batch",
           "read_cifar_pickle_batch"]


class ImageDataset(Dataset):
    """A finite image dataset from integer pixel arrays.

    Args:
        train_pixels, test_pixels: (N, C, H, W) integer tensors with values in [0, num_levels).
        num_levels: number of intensity levels L.
        train_labels, test_labels: optional (N,) class labels.
        num_classes: number of classes when labels are given.
        hflip: draw training batches with random horizontal flips (probability 1/2 per image).
    """

    def __init__(
        self,
        train_pixels: torch.Tensor,
        test_pixels: torch.Tensor,
        num_levels: int,
        train_labels: Optional[torch.Tensor] = None,
        test_labels: Optional[torch.Tensor] = None,
        num_classes: Optional[int] = None,
        hflip: bool = False,
    ):
        if not isinstance(hflip, bool):
            raise ValueError(f"hflip must be true or false; got {hflip!r}")
        self.hflip = hflip
        self._train_on: Dict[torch.device, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
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
        device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(self.train.shape[0], (n,), generator=generator, device=device)
        train, labels = self._train_data(device)
        x = train[idx]
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=device) < 0.5
            x = torch.where(flip.view(n, *([1] * (x.ndim - 1))), x.flip(-1), x)
        return (x, labels[idx]) if return_labels else x

    def _train_data(self, device: torch.device):
        """The training images (and labels) on `device`, copied there once."""
        if device.type == "cpu":
            return self.train, self.train_labels
        if device not in self._train_on:
            labels = None if self.train_labels is None else self.train_labels.to(device)
            self._train_on[device] = (self.train.to(device), labels)
        return self._train_on[device]


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


#: find_class entries a CIFAR-10 python batch may name: numpy array reconstruction and the bytes codec
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers only: a pickle file is code, and a
    file that names any other callable is refused instead of run."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused: the file names {module}.{name}, which no CIFAR-10 python batch contains")
        return super().find_class(module, name)


def read_cifar_pickle_batch(path: str, image_size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read one batch of the `cifar-10-batches-py` layout (a pickled dict with b"data", an (N, 3072)
    uint8 array of R, G, B planes, and b"labels") -> ((N, 3, 32, 32) uint8 images, (N,) labels).

    Only numpy arrays and plain containers are unpickled (no other code runs)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 python batch ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a pickled dict); got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: keys {sorted(obj)}, need 'data' and 'labels'")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["labels"], dtype=np.int64)
    d = 3 * image_size * image_size
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != d or labels.shape != data.shape[:1]:
        raise ValueError(f"{path} is corrupt: data {data.dtype} {data.shape} and labels {labels.shape}; "
                         f"need (N, {d}) uint8 and (N,)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path} is corrupt: labels outside 0..9")
    return torch.as_tensor(data.reshape(-1, 3, image_size, image_size).copy()), torch.as_tensor(labels)


def _check_data_dir(data_dir: str, dataset: str, needs: str) -> str:
    path = os.path.expanduser(data_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{dataset}: data_dir={data_dir!r} does not exist or is not a folder; it must hold {needs} "
                                "(nothing is downloaded at run time)")
    return path


class CIFAR10(ImageDataset):
    """CIFAR-10 from the original batches in `data_dir` (32x32x3, 8-bit, 50,000 + 10,000).

    Two layouts are recognised, in `data_dir` itself or in its sub-folder of the same name:

    * `cifar-10-batches-bin`: data_batch_1.bin .. data_batch_5.bin, test_batch.bin;
    * `cifar-10-batches-py`: data_batch_1 .. data_batch_5, test_batch (pickled dicts, read without
      running code: `read_cifar_pickle_batch`).

    Args:
        data_dir: the folder.
        hflip: random horizontal flips of the training batches (`conf/data/cifar10.yaml` sets true,
            as score_sde and DDPM train CIFAR-10).

    Raises:
        FileNotFoundError: `data_dir` missing, or a layout with some of its files missing (named).
        ValueError: no file of either layout found.
    """

    name = "cifar10"
    FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    PY_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    #: layout name -> (its files, the reader of one file)
    LAYOUTS = {"cifar-10-batches-bin": (FILES, read_cifar_batch), "cifar-10-batches-py": (PY_FILES, read_cifar_pickle_batch)}

    def __init__(self, data_dir: str = "data/cifar10", hflip: bool = False):
        root = _check_data_dir(data_dir, "cifar10", "the cifar-10-batches-bin or cifar-10-batches-py files")
        for layout, (files, reader) in self.LAYOUTS.items():
            subdirs = ("", layout)
            if any(os.path.isfile(os.path.join(root, sub, f)) for sub in subdirs for f in files):
                paths = _find(root, files, "cifar10", subdirs=subdirs)
                break
        else:
            raise ValueError(f"cifar10: data_dir={data_dir!r} is in no recognised layout: found neither "
                             f"cifar-10-batches-bin files ({self.FILES[0]}, ...) nor cifar-10-batches-py files "
                             f"({self.PY_FILES[0]}, ...) in it or in its sub-folders {list(self.LAYOUTS)}")
        self.layout = layout
        parts = [reader(p) for p in paths]
        tr_x = torch.cat([p[0] for p in parts[:5]])
        tr_y = torch.cat([p[1] for p in parts[:5]])
        super().__init__(tr_x, parts[5][0], 256, tr_y, parts[5][1], num_classes=10, hflip=hflip)


#: file endings an image folder may hold (PNG natively, the others through Pillow, which matplotlib requires)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _read_image(path: str) -> np.ndarray:
    """One image file -> (C, H, W) uint8 (grey: C = 1; an alpha channel is dropped)."""
    from matplotlib import image as mpimg

    try:
        arr = np.asarray(mpimg.imread(path))
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    if arr.dtype.kind == "f":  # PNG through matplotlib: floats in [0, 1]
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"{path}: {arr.dtype} pixels; only 8-bit images are supported")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{path}: image of shape {arr.shape}; need grey, RGB or RGBA")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageFolder(ImageDataset):
    """Images in class sub-folders of `data_dir` (`data_dir/<class>/<image>`), 8-bit, one size.

    Classes are the sub-folder names in sorted order (label k = the k-th name, `classes[k]`); files
    with the endings in `IMAGE_SUFFIXES` are read (PNG by matplotlib, the others through Pillow),
    in sorted order; grey images have one channel, RGBA loses its alpha. A deterministic random
    split holds out `test_fraction` of the images.

    Args:
        data_dir: the folder.
        test_fraction: share of the images held out, in (0, 1).
        seed: seed of the split.
        hflip: random horizontal flips of the training batches.

    Raises:
        FileNotFoundError: `data_dir` missing.
        ValueError: no class sub-folder with images (an unrecognised layout); images of different
            sizes or channel counts (the first offending file is named); fewer than 2 images.
    """

    name = "image_folder"

    def __init__(self, data_dir: str = "data/images", test_fraction: float = 0.1, seed: int = 0, hflip: bool = False):
        check_in_open_interval("test_fraction", test_fraction, 0.0, 1.0)
        root = _check_data_dir(data_dir, "image_folder", "one sub-folder of images per class")
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        files: List[Tuple[str, int]] = []
        for k, cls in enumerate(classes):
            folder = os.path.join(root, cls)
            files += [(os.path.join(folder, f), k) for f in sorted(os.listdir(folder))
                      if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))]
        used = sorted({k for _, k in files})
        if not files:
            raise ValueError(f"image_folder: data_dir={data_dir!r} is in no recognised layout: it needs class sub-folders "
                             f"holding images ({', '.join(IMAGE_SUFFIXES)}), e.g. {data_dir}/cat/0001.png; found "
                             f"sub-folders {classes[:5]} and no images in them")
        if len(files) < 2:
            raise ValueError(f"image_folder: data_dir={data_dir!r} holds {len(files)} image; need at least 2 (train and test)")
        classes = [classes[k] for k in used]  # folders without images are no class
        relabel = {k: i for i, k in enumerate(used)}
        images = []
        for path, _ in files:
            img = _read_image(path)
            if images and img.shape != images[0].shape:
                raise ValueError(f"image_folder: {path} is {tuple(img.shape)} (C, H, W) but {files[0][0]} is "
                                 f"{tuple(images[0].shape)}; all images must have one size and channel count")
            images.append(img)
        pixels = torch.as_tensor(np.stack(images))
        labels = torch.tensor([relabel[k] for _, k in files], dtype=torch.long)
        self.classes = classes
        tr, te = _split(pixels.shape[0], test_fraction, seed)
        super().__init__(pixels[tr], pixels[te], 256, labels[tr], labels[te], num_classes=len(classes), hflip=hflip)
