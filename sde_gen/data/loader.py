"""Image batches through `torch.utils.data.DataLoader`: worker processes, pinned memory, and the
same global batches on every world size, device, worker count and resume.

The alternative to `ImageDataset.sample_batch` (the on-device sampler: uniform indices with
replacement drawn by the training generator on the training device). Here the order of examples is
a function of the run's seed alone:

    epoch e            a permutation pi_e of the N training images and N flip bits, drawn on the CPU
                       by a generator seeded with `stream_seed(seed, e)` (`sde_gen.distributed`)
    step s, global     positions p = s B, ..., s B + B - 1 of the concatenated epochs; position p is
                       image pi_{p // N}[p mod N], mirrored left-right when its flip bit is set
                       (`hflip=True`)
    process r of W     the slice [r B / W, (r + 1) B / W) of the global batch of every step (the
                       role of `DistributedSampler`, but the split is of each global batch, so W
                       processes see exactly the batch one process sees)

So every epoch visits each image once (sampling without replacement, as a shuffled DataLoader
does), and a resumed run starts its sampler at the checkpoint's step: no sampler state is needed.
`GlobalBatchSampler` yields the (index, flip) pairs of this process in the main process; the
workers only read, flip and normalise (`ImageExamples`), so the worker count never changes a batch.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Sampler

from .._validation import check_nonnegative, check_positive_int
from ..distributed import shard_batch_size, stream_seed

__all__ = ["GlobalBatchSampler", "ImageExamples", "image_loader"]


class GlobalBatchSampler(Sampler):
    """The (index, flip) pairs of one process, step by step (see the module docstring).

    Args:
        num_examples: N, the training images.
        batch_size: B, the global batch.
        seed: the run's seed.
        rank, world_size: this process among W (B must be a multiple of W).
        start_step: the first step to yield (a resumed run's step).
        hflip: draw the flip bits (False: no image is mirrored).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, hflip: bool = False):
        self.num_examples = check_positive_int("num_examples", num_examples)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.local = shard_batch_size(batch_size, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}); got {rank!r}")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.start_step = int(check_nonnegative("start_step", start_step))
        self.hflip = bool(hflip)
        self._epoch: Tuple[int, Optional[torch.Tensor], Optional[torch.Tensor]] = (-1, None, None)

    def epoch(self, e: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pi_e, flip bits of epoch e): an (N,) permutation and (N,) bools."""
        if self._epoch[0] != e:
            g = torch.Generator().manual_seed(stream_seed(self.seed, e))
            perm = torch.randperm(self.num_examples, generator=g)
            flip = torch.rand(self.num_examples, generator=g) < 0.5 if self.hflip else torch.zeros(self.num_examples, dtype=torch.bool)
            self._epoch = (e, perm, flip)
        return self._epoch[1], self._epoch[2]

    def global_batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (B,) image indices and (B,) flip bits of the global batch of `step`."""
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs = positions // self.num_examples
        index = torch.empty(self.batch_size, dtype=torch.long)
        flip = torch.empty(self.batch_size, dtype=torch.bool)
        for e in torch.unique(epochs).tolist():
            at = epochs == e
            perm, bits = self.epoch(e)
            offsets = positions[at] % self.num_examples
            index[at], flip[at] = perm[offsets], bits[offsets]
        return index, flip

    def __iter__(self) -> Iterator[List[Tuple[int, bool]]]:
        step = self.start_step
        lo, hi = self.rank * self.local, (self.rank + 1) * self.local
        while True:
            index, flip = self.global_batch(step)
            yield list(zip(index[lo:hi].tolist(), flip[lo:hi].tolist()))
            step += 1


class ImageExamples(torch.utils.data.Dataset):
    """Item (index, flip) -> the training image in model space (mirrored when flip), and its label.

    Reads the integer pixels and normalises them as `ImageDataset` does (x = to_model(k + 1/2)),
    so a batch equals the same rows of `ImageDataset.train`.
    """

    def __init__(self, dataset, labels: bool = False):
        self.pixels = dataset.train_pixels
        self.labels = dataset.train_labels if labels else None
        if labels and self.labels is None:
            dataset.check_labelled()
        self.to_model = dataset.to_model

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, item: Tuple[int, bool]):
        index, flip = item
        x = self.to_model(self.pixels[index].float() + 0.5)
        if flip:
            x = x.flip(-1)
        return x if self.labels is None else (x, self.labels[index])


def image_loader(dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 labels: bool = False, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False) -> DataLoader:
    """A DataLoader of this process's share of every global training batch (module docstring).

    Args:
        dataset: an `ImageDataset` (its `hflip` decides the flips).
        batch_size: the global batch B (each process gets B / world_size rows a step).
        seed, rank, world_size, start_step: as for `GlobalBatchSampler`.
        labels: also yield the (B / W,) labels.
        num_workers, pin_memory, persistent_workers: as for `torch.utils.data.DataLoader`.

    Returns:
        An infinite DataLoader: each item is x of shape (B / W, *event) (and y) on the CPU.

    Raises:
        ValueError for a dataset without integer pixels (only finite image sets go through a
        loader), or persistent_workers without workers.
    """
    if getattr(dataset, "train_pixels", None) is None:
        raise ValueError(f"train.loader=dataloader reads finite image data sets; {getattr(dataset, 'name', dataset)!r} "
                         "has no training images (allowed: train.loader=device)")
    check_nonnegative("num_workers", num_workers)
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers=true needs num_workers >= 1 (workers to keep); got num_workers=0")
    sampler = GlobalBatchSampler(dataset.train_pixels.shape[0], batch_size, seed, rank, world_size, start_step,
                                 hflip=bool(getattr(dataset, "hflip", False)))
    return DataLoader(ImageExamples(dataset, labels), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=persistent_workers)
