"""Data loaders for training and evaluation, alone or under torch.distributed, with resumable epochs.

Order: `ShardedSampler` gives each rank its share of one epoch. The epoch's order is a permutation seeded by
(seed, epoch), identical on every rank; rank r takes positions r, r + world, r + 2·world, ... So the order of
any epoch can be rebuilt from (seed, epoch) alone, which is what resuming needs:

    loader = build_loader(train, batch_size=64, shuffle=True, seed=seed, drop_last=True, rank=r, world_size=w)
    set_epoch(loader, epoch, skip_batches=k)   # before iterating: this epoch's order, its first k batches skipped
    for images, labels in loader: ...          # yields batches k, k+1, ... of the epoch

`len(loader)` after set_epoch is the number of batches left in the epoch. Packed shards (vit.data.shards) are
read a few shards at a time: their epoch's permutation is reordered to visit its shards in a seeded order,
`SHUFFLE_WINDOW` shards at a time, the images of a window still shuffled among themselves (`window_order`). Random augmentation is drawn by
worker processes seeded from (seed, rank); it is not replayed on resume (the order of images is).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any, Protocol, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vit.data.errors import DataError

Item = TypeVar("Item")
# Shards read at once by a shuffled epoch: 16 ImageNet shards of ~1,250 images mix like a 20,000-image shuffle
# buffer (pack shuffles images across shards too), and 16 open files or member tables per process cost little.
SHUFFLE_WINDOW = 16


class ShardedSampler(Sampler[int]):
    """One rank's share of a dataset per epoch, in a seeded order, optionally starting part-way.

    even=True (training): the epoch is cut to a multiple of world_size, so every rank takes the same number of
    steps (DDP ranks must stay in lockstep); even=False (evaluation): every item exactly once, with no padding
    duplicates (they would bias accuracy), so ranks may differ by one item. groups (each item's shard): a
    shuffled epoch visits the shards `window` at a time (`window_order`).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        even: bool,
        groups: torch.Tensor | None = None,
        window: int = SHUFFLE_WINDOW,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.groups = groups
        self.window = window
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch `epoch` from this rank's `skip`-th item on."""
        self.epoch = epoch
        self.skip = skip

    def _share(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
            if self.groups is not None:
                order = window_order(order, self.groups, self.window, generator)
        else:
            order = torch.arange(self.size)
        if self.even:
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share()[self.skip :].tolist())

    def __len__(self) -> int:
        return max(0, len(self._share()) - self.skip)


def window_order(
    order: torch.Tensor, groups: torch.Tensor, window: int, generator: torch.Generator
) -> torch.Tensor:
    """The permutation `order` reordered by blocks: the groups in a random order, `window` groups per block;
    within a block the items keep their order in `order` (a stable sort), so they stay shuffled."""
    num_groups = int(groups.max()) + 1
    position = torch.empty(num_groups, dtype=torch.int64)
    position[torch.randperm(num_groups, generator=generator)] = torch.arange(num_groups)
    block = position[groups[order]] // window
    return order[torch.sort(block, stable=True).indices]


def build_loader(
    dataset: Dataset[Item],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int | None = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Item]:
    """A loader over this rank's share (see the module docstring); batch_size is per rank.

    drop_last=True is for training: equal shares and only full batches. pin_memory None: pin when CUDA is there.
    num_workers None: as many as this process's share of the CPUs allows (`default_workers`).
    """
    if num_workers is None:
        num_workers = default_workers()
    if not isinstance(dataset, Sized) or len(dataset) == 0:
        raise DataError("the dataset is empty: nothing to load")
    sampler = ShardedSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        even=drop_last,
        groups=getattr(dataset, "shard_of", None),  # shards (vit.data.shards): a few at a time
    )
    if drop_last and len(sampler) < batch_size:
        raise DataError(
            f"the dataset's {len(dataset)} images give rank {rank} of {world_size} only {len(sampler)}, "
            f"less than one batch of {batch_size}: lower the batch size or use more data"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        # Seeds the worker processes (and so their augmentation): distinct per rank, fixed per seed.
        generator=torch.Generator().manual_seed(seed * 1009 + rank),
    )


# Decoding and augmenting a 224-px photo takes a few ms of one core; more than this many workers per process only
# adds memory and start-up time.
MAX_DEFAULT_WORKERS = 16


def default_workers() -> int:
    """Loader workers per training process: its share of this machine's usable CPUs (the processes torchrun
    starts here share them), less one core for the training process itself; at least one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // local_processes - 1))


class EpochBatches(Protocol):
    """What set_epoch works on: a loader made by build_loader, or vit.data.device_batches.DeviceBatches."""

    @property
    def sampler(self) -> object: ...

    @property
    def batch_size(self) -> int | None: ...


def set_epoch(loader: EpochBatches, epoch: int, *, skip_batches: int = 0) -> None:
    """Make the loader's next iteration yield epoch `epoch`, starting at its batch `skip_batches`."""
    sampler = loader.sampler
    if not isinstance(sampler, ShardedSampler) or loader.batch_size is None:
        raise TypeError("set_epoch needs a loader made by build_loader")
    sampler.set_epoch(epoch, skip=skip_batches * loader.batch_size)
