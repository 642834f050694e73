"""The dataset interface shared by training, sampling and likelihood code.

Every dataset object provides, in MODEL space (the space the SDE acts on):

    name: str, event_shape: tuple                     e.g. (2,) for ring2d, (1, 8, 8) for digits
    sample_batch(batch_size, generator, return_labels=False) -> (B, *event) float32
        oracle and toy datasets draw fresh exact samples (infinite data); finite datasets draw a
        uniformly random minibatch (with replacement) of their training set. With
        return_labels=True: `(x, y)`, y the (B,) long class labels on x's device; the same random
        numbers are drawn either way, so asking for labels does not change x
    test: (N, *event) float32                          held-out data (oracle/toys: a fixed seeded sample)
    test_labels: (N,) long | None                      their class labels
    num_classes: int | None                            C for labelled data (labels 0..C-1), None if unlabelled
    oracle: GaussianMixture | None                     the exact distribution when known
    num_bits: int | None                               8 for 8-bit images, None otherwise
    num_levels: int | None                             intensity levels of discrete data (2^num_bits
                                                       for 8-bit images, 17 for digits), None for continuous data

Image datasets (see `images.py`) also give the integer pixels `test_pixels`, the affine map
`to_model(v)` from continuous pixel units v in [0, num_levels) to [-1, 1], its inverse `to_pixels`,
and the constant Jacobian `model_per_pixel` = dx/dv, for exact change of variables in bits/dim.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Tuple

import torch

__all__ = ["Dataset"]


class Dataset(ABC):
    """Abstract dataset (see the module docstring for the contract)."""

    name: str = ""
    event_shape: Tuple[int, ...] = ()
    oracle = None
    num_bits: Optional[int] = None
    num_levels: Optional[int] = None
    num_classes: Optional[int] = None
    test: torch.Tensor
    test_labels: Optional[torch.Tensor] = None

    @abstractmethod
    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        """(batch_size, *event_shape) float32 training data in model space on the generator's device.

        With `return_labels=True`, `(x, y)` with y the (batch_size,) long class labels; a dataset
        without labels raises ValueError (see `check_labelled`).
        """

    @property
    def labelled(self) -> bool:
        """Whether the data carry class labels (`num_classes` is set)."""
        return self.num_classes is not None

    def check_labelled(self, why: str = "class labels were requested") -> int:
        """`num_classes`, or ValueError naming the dataset when it has no labels."""
        if self.num_classes is None:
            raise ValueError(
                f"data: {self.name!r} has no class labels ({why}); labelled data: the oracle mixtures, "
                "moons, checkerboard, circles, digits, mnist, cifar10, image_folder"
            )
        return self.num_classes

    @property
    def dim(self) -> int:
        """Number of values per sample."""
        n = 1
        for d in self.event_shape:
            n *= d
        return n

    def data_std(self) -> float:
        """Overall standard deviation of the held-out data (a scalar used for input scaling)."""
        return float(self.test.flatten(1).std(0).pow(2).mean().sqrt())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, event_shape={self.event_shape})"
