"""What sampling and evaluation need of a data set, without its data: `DataStats`.

A checkpoint stores `DataStats.as_dict()` (plain values only, so `torch.load(weights_only=True)`
reads it) under "data_stats". When the training data are no longer on disk, `load_trained` builds
a `DataStats` instead of the data set, and sampling runs from the checkpoint alone:

    name, event_shape        the data set and the (C, H, W) or (D,) shape of one example
    data_std                 the standard deviation the network's preconditioning was built with
    num_levels, num_bits     intensity levels L of discrete images (256 and 8 for 8-bit data, 17 and
                             None for the digits), None for continuous data
    normalization            "2v/L-1": model space x = 2 v / L - 1 for pixel units v in [0, L)
                             (`sde_gen.data.images`), or "identity" for continuous data
    num_classes, classes     C for labelled data (and an image folder's class names), else None

It follows the `Dataset` interface for everything but the data: `test`, `test_pixels` and `oracle`
are None, and `sample_batch` says that there are no data to draw from.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .base import Dataset

__all__ = ["DataStats", "NORMALIZATIONS"]

#: how model space relates to the stored values: images x = 2 v / L - 1; continuous data unchanged
NORMALIZATIONS = ("2v/L-1", "identity")


class DataStats(Dataset):
    """The statistics of a data set (see the module docstring).

    Args:
        name, event_shape, data_std, num_levels, num_bits, num_classes, classes, normalization: as
            above.

    Raises:
        ValueError naming the field for a shape that is not a list of integers >= 1, a data_std
        that is not positive, a normalization not in NORMALIZATIONS, an image normalization without
        num_levels, or a class count that disagrees with the class names.
    """

    oracle = None
    test = None
    test_labels = None
    test_pixels = None
    train = None

    def __init__(self, name: str, event_shape, data_std: float, num_levels: Optional[int] = None,
                 num_bits: Optional[int] = None, num_classes: Optional[int] = None,
                 classes: Optional[List[str]] = None, normalization: str = "identity"):
        shape = tuple(event_shape) if isinstance(event_shape, (list, tuple)) else None
        if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
            raise ValueError(f"event_shape must be a non-empty list of integers >= 1; got {event_shape!r}")
        if isinstance(data_std, bool) or not isinstance(data_std, (int, float)) or not data_std > 0:
            raise ValueError(f"data_std must be a number > 0; got {data_std!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}; got {normalization!r}")
        if normalization == "2v/L-1" and not (isinstance(num_levels, int) and num_levels >= 2):
            raise ValueError(f"num_levels must be an integer >= 2 for image data (normalization 2v/L-1); got {num_levels!r}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes must name num_classes={num_classes} classes; got {len(classes)} names")
        self.name, self.event_shape, self.data_std_value = str(name), shape, float(data_std)
        self.num_levels, self.num_bits, self.num_classes = num_levels, num_bits, num_classes
        self.classes, self.normalization = (list(classes) if classes is not None else None), normalization

    @classmethod
    def from_dataset(cls, data: Dataset, data_std: float) -> "DataStats":
        """The statistics of `data` (its `data_std()` passed in: it may cost a pass over the data)."""
        levels = getattr(data, "num_levels", None)
        image = getattr(data, "train_pixels", None) is not None or getattr(data, "test_pixels", None) is not None
        return cls(getattr(data, "name", "") or type(data).__name__, list(data.event_shape), float(data_std), levels,
                   getattr(data, "num_bits", None), getattr(data, "num_classes", None), getattr(data, "classes", None),
                   "2v/L-1" if image else "identity")

    def as_dict(self) -> Dict[str, Any]:
        """Plain values for the checkpoint."""
        return {"name": self.name, "event_shape": list(self.event_shape), "data_std": self.data_std_value,
                "num_levels": self.num_levels, "num_bits": self.num_bits, "num_classes": self.num_classes,
                "classes": self.classes, "normalization": self.normalization}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DataStats":
        """Rebuild from `as_dict()`; ValueError naming the field for a missing or bad entry."""
        if not isinstance(d, dict):
            raise ValueError(f"data_stats must be a dict; got {type(d).__name__}")
        missing = [k for k in ("name", "event_shape", "data_std") if k not in d]
        if missing:
            raise ValueError(f"data_stats is missing {missing}")
        return cls(d["name"], d["event_shape"], d["data_std"], d.get("num_levels"), d.get("num_bits"),
                   d.get("num_classes"), d.get("classes"), d.get("normalization", "identity"))

    def data_std(self) -> float:
        return self.data_std_value

    @property
    def model_per_pixel(self) -> Optional[float]:
        """dx/dv = 2 / L for images (None for continuous data)."""
        return 2.0 / self.num_levels if self.normalization == "2v/L-1" else None

    def _image(self, what: str) -> float:
        if self.normalization != "2v/L-1":
            raise ValueError(f"{what} is defined for image data; {self.name!r} is continuous")
        return self.model_per_pixel

    def to_model(self, v: torch.Tensor) -> torch.Tensor:
        """Pixel units v in [0, L) -> model space x = 2 v / L - 1 (images only)."""
        return v * self._image("to_model") - 1.0

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> continuous pixel units (images only)."""
        return (x + 1.0) / self._image("to_pixels")

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> the nearest integer pixel value in [0, L - 1] (images only)."""
        return self.to_pixels(x).floor().clamp(0, self.num_levels - 1).long()

    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        raise ValueError(f"the data set {self.name!r} is not on disk: only its statistics were loaded from the checkpoint "
                         "(sampling needs nothing else; training and test-set metrics need the data files)")

    def __repr__(self) -> str:
        return (f"DataStats({self.name!r}, event_shape={self.event_shape}, data_std={self.data_std_value:.4g}, "
                f"num_levels={self.num_levels}, num_classes={self.num_classes})")
