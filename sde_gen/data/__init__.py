"""Datasets behind one interface (`base.Dataset`): exact oracle mixtures, 2-D toys and images.

`DATASETS` maps a config name to its class; `build_dataset(name, **options)` builds one.
"""
from __future__ import annotations

from .._validation import check_choice
from .base import Dataset
from .images import CIFAR10, MNIST, Digits, ImageDataset, ImageFolder, read_cifar_batch, read_cifar_pickle_batch, read_idx
from .stats import DataStats
from .oracle import Gaussian16D, Mixture64D, OracleDataset, Ring2D
from .toys import Checkerboard, Circles, SwissRoll, ToyDataset, TwoMoons

#: config name -> dataset class
DATASETS = {
    "ring2d": Ring2D,
    "mixture64d": Mixture64D,
    "gaussian16d": Gaussian16D,
    "moons": TwoMoons,
    "swiss_roll": SwissRoll,
    "checkerboard": Checkerboard,
    "circles": Circles,
    "digits": Digits,
    "mnist": MNIST,
    "cifar10": CIFAR10,
    "image_folder": ImageFolder,
}


def build_dataset(name: str, **options) -> Dataset:
    """Construct a dataset by name with its options (e.g. `build_dataset("mnist", data_dir=...)`)."""
    check_choice("data", name, DATASETS)
    return DATASETS[name](**options)


__all__ = [
    "Dataset", "OracleDataset", "ToyDataset", "ImageDataset", "Ring2D", "Mixture64D", "Gaussian16D",
    "TwoMoons", "SwissRoll", "Checkerboard", "Circles", "Digits", "MNIST", "CIFAR10",
    "ImageFolder", "DataStats", "DATASETS", "build_dataset", "read_idx", "read_cifar_batch", "read_cifar_pickle_batch",
]
