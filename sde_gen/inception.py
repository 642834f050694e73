"""Inception-v3 features for FID and KID, from a local weights file (nothing is downloaded).

FID (Heusel et al. 2017, eq. 6) and KID (Binkowski et al. 2018) are defined in the 2048-D pool
features of the Inception-v3 network (Szegedy et al. 2016) as released by TensorFlow on
2015-12-05; published numbers use that graph, its weights, and its input pipeline:

    pixels        8-bit values p in {0..255} (model space x in [-1, 1]: p = round((x + 1) 127.5))
    resize        to 299 x 299 by TensorFlow-1 bilinear resizing (align_corners=False): output
                  index i reads the input at i * (in / out), with no half-pixel offset
    normalise     (p - 128) / 128
    network       Inception-v3 with two departures of the 2015 graph from the paper: average
                  pools inside the blocks leave the zero padding out of the mean, and the last
                  block (Mixed_7c) pools its branch with a max pool instead of an average
    features      the global average of Mixed_7c's output: (N, 2048)

The module below is written from that description; its parameter names are those of the converted
weights files (`weights-inception-2015-12-05-6726825d.pth` of torch-fidelity: its extractor loads our
state dict strictly, see the tests; `pt_inception-2015-12-05-6726825d.pth` of pytorch-fid, built on
torchvision's Inception3 with the same block and layer names, was not available here to check), and
`load_inception(path)` names any missing or unexpected key. torch-fidelity and torchmetrics are not used
at run time: both packages import torchvision on import, which has no build beside our torch; the
tests compare this module with torch-fidelity's extractor (same random weights) where that package
is importable.

Reference statistics of a data set (mean, covariance and a subset of the features for KID) are
computed once and cached in a file keyed by the content of the reference images, the weights
file and the resize (`reference_statistics`).
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_positive_int

__all__ = [
    "WEIGHTS_FILE_NAME",
    "FIDInceptionV3",
    "load_inception",
    "resize_bilinear_tf1",
    "to_uint8_pixels",
    "inception_features",
    "reference_statistics",
    "default_cache_dir",
    "fid_kid",
]

#: the conventional name of the converted TensorFlow 2015-12-05 weights (pytorch-fid's release)
WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
#: the input size of the network (published FIDs use 299)
INPUT_SIZE = 299
FEATURE_DIM = 2048
_MIN_SIZE = 75  # the smallest input the stride-2 stem and the reduction blocks accept


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TensorFlow graph), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x):
    # the 2015 graph's 3x3 average pool with "SAME" padding: padded zeros do not count
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Fig. 5 of Szegedy et al. 2016): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class _ReductionB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Fig. 6): 1x1 | 1x7-7x1 | 7x1-1x7-7x1-1x7 | pool."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class _ReductionD(nn.Module):
    """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """8x8 block with expanded filter banks (Fig. 7): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool.

    `max_pool`: the 2015 graph's last block (Mixed_7c) pools with a max pool, the first with an
    average that leaves the padding out.
    """

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow-1 bilinear resize with align_corners=False: (B, C, H, W) -> (B, C, size, size).

    Output row i reads the input at y = i * H / size (no half-pixel offset), between rows
    floor(y) and min(floor(y) + 1, H - 1) with weights 1 - frac(y) and frac(y); likewise for columns.
    """
    check_positive_int("size", size)

    def along(v: torch.Tensor, dim: int) -> torch.Tensor:
        n = v.shape[dim]
        # float32 position arithmetic, as the TensorFlow kernel does (float64 moves weights by ~1e-4)
        scale = torch.tensor(n / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=torch.float32, device=v.device) * scale.to(v.device)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (pos - lo.to(torch.float32)).to(v.dtype)
        shape = [1] * v.ndim
        shape[dim] = size
        w = w.view(shape)
        return v.index_select(dim, lo) * (1 - w) + v.index_select(dim, hi) * w

    return along(along(x, 2), 3)


def to_uint8_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model-space images x in [-1, 1] -> 8-bit values round((x + 1) 127.5) in [0, 255], as floats.

    The quantisation a PNG of the samples would hold; samples and reference images go through it alike.
    """
    return ((x.to(torch.float32) + 1) * 127.5).round().clamp(0, 255)


class FIDInceptionV3(nn.Module):
    """The 2015-12-05 TensorFlow Inception-v3 up to its 2048-D pool features (Szegedy et al. 2016).

    `forward(pixels)` takes (B, 3, H, W) 8-bit values in [0, 255] (floats), resizes them to
    `resize` x `resize` (TensorFlow-1 bilinear), normalises to (p - 128) / 128 and returns the
    (B, 2048) pool features. Parameters are random until `load_inception` (or `load_state_dict`)
    fills them; `fc` is the 1008-way head of the weights file (not used for the features).

    Args:
        resize: the network's input size; 299 for FIDs comparable with published ones (>= 75).
    """

    def __init__(self, resize: int = INPUT_SIZE):
        super().__init__()
        check_positive_int("resize", resize)
        if resize < _MIN_SIZE:
            raise ValueError(f"resize must be >= {_MIN_SIZE} (the smallest input of Inception-v3; 299 for "
                             f"standard FID); got {resize}")
        self.resize = resize
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must have shape (B, 3, H, W); got {tuple(pixels.shape)}")
        x = resize_bilinear_tf1(pixels.to(self.fc.weight.dtype), self.resize)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def _missing_weights_message(path) -> str:
    return (f"inception weights: no file at {path!r}. FID/KID need the converted TensorFlow Inception weights "
            f"{WEIGHTS_FILE_NAME} (95 MB; pytorch-fid's release, or torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth): download it once on a machine with network access, copy it "
            "to this machine and set inception.weights=/path/to/that/file (nothing is downloaded at run time)")


def load_inception(path: str, device=None, resize: int = INPUT_SIZE) -> FIDInceptionV3:
    """The FID Inception network with the weights of the state-dict file at `path`, in eval mode.

    Args:
        path: a `torch.save`d state dict (`pt_inception-2015-12-05-6726825d.pth`).
        device: where to put the network (None: CPU).
        resize: the input size (299 for standard FID).

    Raises:
        ValueError: no file at `path` (the message says which file to put where), or a file that
            is not the Inception state dict (naming the missing or unexpected keys).
    """
    if not path or not os.path.isfile(os.path.expanduser(str(path))):
        raise ValueError(_missing_weights_message(path))
    path = os.path.expanduser(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, or not a torch file
        raise ValueError(f"inception weights: {path!r} is not a readable torch state dict ({err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"inception weights: {path!r} must hold a state dict; got a {type(state).__name__}")
    net = FIDInceptionV3(resize=resize)
    # the converted files may carry batch-norm step counters (unused at inference) or not
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"inception weights: {path!r} is not the FID Inception-v3 state dict ({WEIGHTS_FILE_NAME}); "
                         f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return net.to(device).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """(N, 2048) float64 pool features of model-space images (N, C, H, W) in [-1, 1], C in {1, 3}.

    Images are quantised to 8 bits (`to_uint8_pixels`); one channel is repeated to three.
    """
    check_positive_int("batch_size", batch_size)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3; got {tuple(images.shape)}")
    device = net.fc.weight.device
    out = []
    for chunk in images.split(batch_size):
        px = to_uint8_pixels(chunk.to(device))
        if px.shape[1] == 1:
            px = px.expand(-1, 3, -1, -1)
        out.append(net(px).to(torch.float64))
    return torch.cat(out)


def default_cache_dir() -> str:
    """`$SDE_GEN_CACHE/fid`, else `$XDG_CACHE_HOME/sde_gen/fid`, else `~/.cache/sde_gen/fid`."""
    root = os.environ.get("SDE_GEN_CACHE")
    if root:
        return os.path.join(root, "fid")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sde_gen", "fid")


def _weights_id(net: FIDInceptionV3) -> str:
    """A digest of the network's parameters and buffers: the cache key part for the weights."""
    h = hashlib.sha1()
    for name, t in sorted(net.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:4096])
        h.update(str(float(t.double().sum())).encode())
    return h.hexdigest()[:16]


def reference_statistics(
    net: FIDInceptionV3,
    images: torch.Tensor,
    name: str = "reference",
    cache_dir: Optional[str] = None,
    batch_size: int = 50,
    kid_rows: int = 1000,
) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Inception statistics of a reference set, computed once and read from a cache file after.

    The cache file `<cache_dir>/<name>-<key>.pt` is keyed by the images' content (a SHA-1 of the
    quantised 8-bit pixels), the network's weights and its resize, so a changed data set, weights
    file or input size gets its own file.

    Args:
        net: the FID Inception network.
        images: (N, C, H, W) model-space reference images (e.g. a data set's test split), N >= 2.
        name: a readable prefix of the cache file (e.g. the data set's name).
        cache_dir: the folder of cache files (None: `default_cache_dir()`); "" disables caching.
        batch_size: images per forward pass.
        kid_rows: how many feature rows to keep for KID (the first ones; <= N).

    Returns:
        ({"mu": (2048,), "cov": (2048, 2048), "features": (min(N, kid_rows), 2048), "n": ()} in
        float64 on CPU, from_cache: bool).
    """
    check_positive_int("kid_rows", kid_rows)
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"images must be (N, C, H, W) with N >= 2; got shape {tuple(images.shape)}")
    h = hashlib.sha1()
    h.update(str(tuple(images.shape)).encode())
    h.update(to_uint8_pixels(images.detach().cpu()).to(torch.uint8).contiguous().numpy().tobytes())
    h.update(f"resize={net.resize};weights={_weights_id(net)};kid_rows={kid_rows}".encode())
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(name)) or "reference"
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = os.path.join(cache_dir, f"{safe}-{h.hexdigest()[:20]}.pt") if cache_dir else None
    if path is not None and os.path.isfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True), True
        except Exception:  # a damaged cache file is recomputed and rewritten
            pass
    feats = inception_features(net, images, batch_size=batch_size).cpu()
    stats = {"mu": feats.mean(0), "cov": torch.cov(feats.T), "features": feats[:kid_rows].clone(),
             "n": torch.tensor(feats.shape[0])}
    if path is not None:
        from .io import atomic_path

        os.makedirs(cache_dir, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(stats, tmp)
    return stats, False


def fid_kid(
    net: FIDInceptionV3,
    samples: torch.Tensor,
    reference: torch.Tensor,
    name: str = "reference",
    cache_dir: Optional[str] = None,
    batch_size: int = 50,
    kid_subsets: int = 10,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, float]:
    """FID and KID of model-space sample images against reference images (e.g. the test split).

    The reference statistics come from `reference_statistics` (computed once, then cached); FID
    uses the full reference covariance, KID (`sde_gen.metrics.kid`, `kid_subsets` subsets of
    min(N, N_ref kept, 1000) rows) the cached reference features.

    Args:
        net: the FID Inception network (`load_inception`).
        samples: (N, C, H, W) images in [-1, 1], N >= 2. reference: (N_ref, C, H, W), N_ref >= 2.
        name, cache_dir: of the reference cache (see `reference_statistics`).
        batch_size: images per forward pass. kid_subsets: random subsets of KID.
        generator: randomness of KID's subsets.

    Returns:
        {"fid", "kid", "kid_std", "fid_num_samples", "fid_reference_size", "fid_reference_cached",
        "inception_resize"}.
    """
    from .metrics import frechet_distance_from_statistics, kid

    if samples.ndim != 4 or samples.shape[0] < 2:
        raise ValueError(f"samples must be (N, C, H, W) images with N >= 2; got shape {tuple(samples.shape)}")
    stats, cached = reference_statistics(net, reference, name=name, cache_dir=cache_dir, batch_size=batch_size)
    f = inception_features(net, samples, batch_size=batch_size).cpu()
    fid = frechet_distance_from_statistics(f.mean(0), torch.cov(f.T), stats["mu"], stats["cov"])
    size = min(f.shape[0], stats["features"].shape[0], 1000)
    kid_mean, kid_std = kid(stats["features"], f, subsets=kid_subsets, subset_size=size, generator=generator)
    return {"fid": float(fid), "kid": float(kid_mean), "kid_std": float(kid_std), "fid_num_samples": int(f.shape[0]),
            "fid_reference_size": int(stats["n"]), "fid_reference_cached": bool(cached),
            "inception_resize": int(net.resize)}
