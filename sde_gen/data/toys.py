"""2-D toy distributions without a closed-form density: two moons, swiss roll, checkerboard,
concentric circles. Each is a generative recipe, so training draws fresh samples every step;
the held-out set is a fixed seeded sample. Coordinates are scaled to roughly unit variance.

Where a label is natural the toy is labelled: moons (2 classes: upper, lower moon), circles
(2: inner, outer), checkerboard (8: the dark squares, numbered column-major). The swiss roll has none.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._validation import check_nonnegative, check_positive_int
from .base import Dataset

__all__ = ["ToyDataset", "TwoMoons", "SwissRoll", "Checkerboard", "Circles"]


class ToyDataset(Dataset):
    """Base class: subclasses write `_draw(n, generator, device) -> ((n, 2) float64, (n,) long labels or None)`.

    Args:
        noise: standard deviation of the isotropic Gaussian noise added to each point.
        num_test: size of the fixed held-out sample.
        seed: seed of the held-out sample.
    """

    event_shape = (2,)

    def __init__(self, noise: float = 0.05, num_test: int = 10000, seed: int = 0):
        self.noise = check_nonnegative("noise", noise)
        g = torch.Generator().manual_seed(int(seed))
        n_test = check_positive_int("num_test", num_test)
        if self.labelled:
            self.test, self.test_labels = self.sample_batch(n_test, g, return_labels=True)
        else:
            self.test = self.sample_batch(n_test, g)

    def _draw(self, n: int, generator: Optional[torch.Generator], device):
        raise NotImplementedError

    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        n = check_positive_int("batch_size", batch_size)
        if return_labels:
            self.check_labelled()
        device = generator.device if generator is not None else None
        x, labels = self._draw(n, generator, device)
        x = x + self.noise * torch.randn(x.shape, generator=generator, device=device, dtype=torch.float64)
        x = x.to(torch.float32)
        return (x, labels) if return_labels else x


def _uniform(n, generator, device):
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


class TwoMoons(ToyDataset):
    """Two interleaved half circles (centred, scaled by 1/0.7 per axis to ~unit variance)."""

    name = "moons"
    num_classes = 2  # 0: upper moon, 1: lower moon

    def _draw(self, n, generator, device):
        theta = math.pi * _uniform(n, generator, device)
        upper = _uniform(n, generator, device) < 0.5
        x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
        y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
        return torch.stack([(x - 0.5) / 0.87, (y - 0.25) / 0.5], dim=1), (~upper).long()


class SwissRoll(ToyDataset):
    """The 2-D swiss roll r = phi, phi in [1.5 pi, 4.5 pi], scaled by 1/7."""

    name = "swiss_roll"

    def _draw(self, n, generator, device):
        phi = 1.5 * math.pi * (1 + 2 * _uniform(n, generator, device))
        return torch.stack([phi * torch.cos(phi), phi * torch.sin(phi)], dim=1) / 7.0, None


class Checkerboard(ToyDataset):
    """Uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2."""

    name = "checkerboard"
    num_classes = 8  # the dark square: 2 * column + (row // 2)

    def __init__(self, noise: float = 0.0, num_test: int = 10000, seed: int = 0):
        super().__init__(noise, num_test, seed)

    def _draw(self, n, generator, device):
        x = 4 * _uniform(n, generator, device) - 2
        col = torch.floor(x + 2)
        # shift y by one square on alternate columns so that (col + row) is even
        pair = torch.floor(2 * _uniform(n, generator, device))
        row = 2 * pair + torch.remainder(col, 2)
        y = row - 2 + _uniform(n, generator, device)
        return torch.stack([x, y], dim=1), (2 * col + pair).long()


class Circles(ToyDataset):
    """Two concentric circles of radii 1 and 2 with equal mass."""

    name = "circles"
    num_classes = 2  # 0: inner circle (radius 1), 1: outer (radius 2)

    def _draw(self, n, generator, device):
        theta = 2 * math.pi * _uniform(n, generator, device)
        outer = _uniform(n, generator, device) >= 0.5
        r = torch.where(outer, 2.0, 1.0)
        return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1), outer.long()
