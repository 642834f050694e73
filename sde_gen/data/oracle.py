"""Oracle datasets: the Gaussian mixtures of `sde_gen.oracles`, with exact samples and scores.

The class label of a sample is the class of its component (`GaussianMixture.classes`): for the
presets each component is its own class, so ring2d has 8 classes, mixture64d 4 and gaussian16d 1.

Training draws fresh exact samples every step (infinite data), so the only errors left are the
network's and the optimiser's; the exact perturbed score lets `diagnostics` measure them.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_positive_int
from ..oracles import make_preset
from .base import Dataset

__all__ = ["OracleDataset", "Ring2D", "Mixture64D", "Gaussian16D"]


class OracleDataset(Dataset):
    """A preset Gaussian mixture as a dataset.

    Args:
        preset: name in `sde_gen.oracles.PRESETS`.
        num_test: size of the fixed held-out sample.
        seed: seed of the held-out sample.
    """

    def __init__(self, preset: str, num_test: int = 10000, seed: int = 0):
        self.oracle = make_preset(preset)
        self.name = preset
        self.event_shape = (self.oracle.dim,)
        self.num_classes = self.oracle.num_classes
        num_test = check_positive_int("num_test", num_test)
        self.test, self.test_labels = self.sample_batch(num_test, torch.Generator().manual_seed(int(seed)), True)

    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        x, component = self.oracle.sample(
            check_positive_int("batch_size", batch_size), generator, dtype=torch.float32, return_labels=True
        )
        return (x, self.oracle.classes.to(component.device)[component]) if return_labels else x


class Ring2D(OracleDataset):
    """The 2-D ring of 8 Gaussians with unequal weights (`make_preset("ring2d")`)."""

    def __init__(self, num_test: int = 10000, seed: int = 0):
        super().__init__("ring2d", num_test, seed)


class Mixture64D(OracleDataset):
    """The 64-D anisotropic 4-component mixture (`make_preset("mixture64d")`)."""

    def __init__(self, num_test: int = 10000, seed: int = 0):
        super().__init__("mixture64d", num_test, seed)


class Gaussian16D(OracleDataset):
    """The 16-D full-covariance Gaussian (`make_preset("gaussian16d")`)."""

    def __init__(self, num_test: int = 10000, seed: int = 0):
        super().__init__("gaussian16d", num_test, seed)
