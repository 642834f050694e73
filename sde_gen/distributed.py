"""Data-parallel training with `torchrun` (PyTorch DistributedDataParallel, Li et al. 2020).

`torchrun --nproc_per_node=N -m sde_gen.train ...` starts N copies of the training app; each finds
its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
`init_distributed` joins the process group (NCCL on CUDA, gloo on the CPU). Nothing here starts
processes: torchrun does.

How one step is shared (`sde_gen.training.train`): every process holds the same training
generator, draws the whole global batch (x0, labels, label dropout, t, z; `train.batch_size`
examples) and keeps its slice of `batch_size / N` examples; DDP all-reduces (averages) the
gradients, so every process takes the same optimiser step on the mean loss over the global batch,
which is what one process computes on the whole batch. Hence:

* exact in exact arithmetic: the weights, EMA and loss log of an N-process run equal those of a
  single process with the same seed and global batch; in floating point they agree to the
  rounding of the different summation order (tests/test_gpu.py measures it);
* the EMA is updated on every process from identical weights, so it is identical across processes
  (bit for bit: the same operations on the same numbers);
* resume on the same or another N continues the same stream of draws (the generator is global);
* the random draws cost N times what one process draws (cheap next to the network's forward and
  backward pass), and only rank 0 logs, evaluates and writes checkpoints.

Sampling and likelihood evaluation (`sde-gen-sample`, `sde-gen-eval` under torchrun) split their
rows into batches instead: batch k draws from its own generator (`batch_generator`, seeded by
`stream_seed(seed, k)`), each process runs a contiguous share of the batches (`shard_range`) and
rank 0 collects the results (`gather_to_main`), so the output is one process's output with the same
batch size, whatever N.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "launched_world_size", "shard_batch_size", "stream_seed", "shard_range",
           "gather_to_main", "batch_generator"]


@dataclass(frozen=True)
class DistInfo:
    """The process's place in the run: `rank` of `world_size`, `local_rank` on its machine;
    `initialized`: this module made the process group (and so must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when the process was not started by a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE must be an integer (set by torchrun); got {os.environ['WORLD_SIZE']!r}") from err


def shard_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch.

    Raises:
        ValueError naming `train.batch_size` and the process count when the batch cannot be split
        evenly, or when there are more processes than examples per step.
    """
    if world_size > batch_size:
        raise ValueError(f"nproc_per_node (world size {world_size}) is larger than train.batch_size={batch_size}: every "
                         f"process needs at least one example per step; use at most {batch_size} processes or a larger batch")
    if batch_size % world_size:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world_size}); "
                         f"allowed: a multiple of {world_size}")
    return batch_size // world_size


def stream_seed(seed: int, *keys: int) -> int:
    """The seed of an independent random stream named by `keys` under the run's `seed`.

    numpy's `SeedSequence` hashes (seed, *keys) into 63 bits, so streams such as "batch k of the
    sampling app" or "epoch e of the data loader" neither overlap nor depend on which process
    draws them: a stream is a function of its name, not of the world size.
    """
    import numpy as np

    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, np.uint64)[0] >> 1)


def shard_range(count: int, rank: int, world_size: int) -> range:
    """The contiguous share of `count` items (batches, rows) of `rank` among `world_size` processes:
    the first `count % world_size` ranks get one more; ranks beyond `count` get none."""
    share, extra = divmod(count, world_size)
    start = rank * share + min(rank, extra)
    return range(start, start + share + (1 if rank < extra else 0))


def batch_generator(seed: int, k: int, device, first: "torch.Generator | None" = None) -> torch.Generator:
    """The generator of batch k of a run split into batches (sampling, likelihood): batch 0 draws
    from `first` (default: a generator seeded with `seed`, so a one-batch run is the direct call
    with `torch.Generator().manual_seed(seed)`), batch k >= 1 from `stream_seed(seed, k)`. So a
    batch's draws never depend on which process runs it, nor on the batches before it."""
    if k == 0:
        return first if first is not None else torch.Generator(device).manual_seed(int(seed))
    return torch.Generator(device).manual_seed(stream_seed(seed, k))


def gather_to_main(obj, info: DistInfo):
    """Every process's `obj` (picklable; tensors on the CPU), in rank order, on rank 0; None on the
    other ranks. A single process gets `[obj]`."""
    if not info.active:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group started by torchrun (a no-op for a single process).

    Args:
        device: the configured device; on CUDA each process takes `cuda:LOCAL_RANK`.

    Returns:
        the `DistInfo`; call `finish_distributed(info)` at the end.
    """
    world = launched_world_size()
    if world == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    made = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        made = True
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, initialized=made)


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device of this process: `cuda:LOCAL_RANK` for CUDA runs under torchrun, else `device`."""
    if not info.active or device.type != "cuda":
        return device
    dev = torch.device("cuda", info.local_rank)
    torch.cuda.set_device(dev)
    return dev


def finish_distributed(info: DistInfo) -> None:
    """Leave the process group if `init_distributed` made it."""
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()
