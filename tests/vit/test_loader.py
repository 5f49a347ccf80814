"""vit.data.loader: rank checks, the empty and exactly-one-batch boundaries, skipping past a rank's share,
set_epoch's type check, worker seeding, worker counts, and epoch orders pinned to exact indices (resuming
rebuilds an epoch's order from (seed, epoch) alone, so the order must never change unnoticed)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vit.data import DataError, ShardedSampler, build_loader, set_epoch
from vit.data.loader import MAX_DEFAULT_WORKERS, default_workers


def _numbered(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n), torch.zeros(n, dtype=torch.long))


def _epoch(loader: DataLoader[tuple[torch.Tensor, ...]]) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


class RandomPerItem(Dataset[torch.Tensor]):
    """Each item is a random number drawn where the item is loaded: in a worker process, by its seeded RNG."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(())


@pytest.mark.parametrize(("rank", "world_size"), [(-1, 2), (2, 2), (0, 0)])
def test_rank_outside_the_world_is_refused(rank: int, world_size: int) -> None:
    with pytest.raises(ValueError, match=f"rank {rank} is outside a world of {world_size}"):
        ShardedSampler(10, shuffle=False, seed=0, rank=rank, world_size=world_size, even=False)
    with pytest.raises(ValueError, match="outside a world"):
        build_loader(_numbered(10), batch_size=1, shuffle=False, seed=0, rank=rank, world_size=world_size)


def test_last_rank_is_inside_the_world() -> None:
    sampler = ShardedSampler(10, shuffle=False, seed=0, rank=1, world_size=2, even=False)
    assert list(sampler) == [1, 3, 5, 7, 9]


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(DataError, match=r"^the dataset is empty: nothing to load$"):
        build_loader(_numbered(0), batch_size=1, shuffle=False, seed=0)


def test_exactly_one_batch_per_rank_is_enough() -> None:
    loaders = [
        build_loader(_numbered(16), batch_size=8, shuffle=False, seed=0, drop_last=True, rank=r, world_size=2)
        for r in range(2)
    ]
    assert [_epoch(loader) for loader in loaders] == [[list(range(0, 16, 2))], [list(range(1, 16, 2))]]
    with pytest.raises(DataError, match=r"give rank 1 of 2 only 7, less than one batch of 8"):
        build_loader(_numbered(15), batch_size=8, shuffle=False, seed=0, drop_last=True, rank=1, world_size=2)


def test_skipping_past_the_share_leaves_nothing() -> None:
    loader = build_loader(_numbered(10), batch_size=2, shuffle=True, seed=0)
    set_epoch(loader, 0, skip_batches=6)
    assert len(loader) == 0 and _epoch(loader) == []
    set_epoch(loader, 0, skip_batches=5)  # exactly the share: nothing left either
    assert len(loader.sampler) == 0 and _epoch(loader) == []  # type: ignore[arg-type]


def test_set_epoch_needs_a_loader_from_build_loader() -> None:
    with pytest.raises(TypeError, match=r"^set_epoch needs a loader made by build_loader$"):
        set_epoch(DataLoader(_numbered(4), batch_size=2), 0)
    sharded_unbatched = DataLoader(
        _numbered(4),
        batch_size=None,
        sampler=ShardedSampler(4, shuffle=False, seed=0, rank=0, world_size=1, even=False),
    )
    with pytest.raises(TypeError, match="needs a loader made by build_loader"):
        set_epoch(sharded_unbatched, 0)


def test_epoch_orders_are_pinned() -> None:
    def share(rank: int, epoch: int, *, even: bool) -> list[int]:
        sampler = ShardedSampler(11, shuffle=True, seed=5, rank=rank, world_size=2, even=even)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert share(0, 0, even=True) == [9, 0, 10, 3, 7]
    assert share(1, 0, even=True) == [5, 8, 2, 6, 1]
    assert share(0, 0, even=False) == [9, 0, 10, 3, 7, 4]  # evaluation: the 11th image too
    assert share(0, 1, even=True) == [2, 8, 1, 5, 3]
    fresh = ShardedSampler(11, shuffle=True, seed=5, rank=0, world_size=2, even=True)
    assert list(fresh) == share(0, 0, even=True)  # before any set_epoch: epoch 0
    unshuffled = ShardedSampler(7, shuffle=False, seed=5, rank=1, world_size=3, even=True)
    assert list(unshuffled) == [1, 4]


def test_skip_continues_the_same_order() -> None:
    sampler = ShardedSampler(11, shuffle=True, seed=5, rank=1, world_size=2, even=True)
    sampler.set_epoch(0, skip=2)
    assert list(sampler) == [2, 6, 1] and len(sampler) == 3


def test_worker_randomness_is_fixed_per_seed_and_distinct_per_rank() -> None:
    def draws(seed: int, rank: int) -> list[float]:
        loader = build_loader(
            RandomPerItem(), batch_size=4, shuffle=False, seed=seed, num_workers=1, rank=rank, world_size=2
        )
        return [round(x, 4) for batch in loader for x in batch.tolist()]

    assert draws(3, 0) == draws(3, 0)
    assert draws(3, 1) != draws(3, 0)
    assert draws(4, 0) != draws(3, 0)
    # Pinned: the seeding of workers is part of a run's reproducibility.
    assert draws(3, 0) == [0.3758, 0.8216]
    assert draws(3, 1) == [0.855, 0.9051]


def test_drop_last_takes_equal_shares_and_full_batches() -> None:
    # 11 images, 2 ranks: each rank gets 5 (not 6 and 5), in 2 full batches of 2 (not a third of 1).
    loaders = [
        build_loader(_numbered(11), batch_size=2, shuffle=False, seed=0, drop_last=True, rank=r, world_size=2)
        for r in range(2)
    ]
    assert [_epoch(loader) for loader in loaders] == [[[0, 2], [4, 6]], [[1, 3], [5, 7]]]
    assert [len(loader) for loader in loaders] == [2, 2]


def test_loader_settings() -> None:
    default = build_loader(_numbered(4), batch_size=2, shuffle=False, seed=0)
    assert default.pin_memory is torch.cuda.is_available()
    assert default.num_workers == 0 and not default.persistent_workers and not default.drop_last
    chosen = build_loader(_numbered(4), batch_size=2, shuffle=False, seed=0, num_workers=1, pin_memory=False)
    assert chosen.pin_memory is False and chosen.persistent_workers
    assert build_loader(_numbered(4), batch_size=2, shuffle=False, seed=0, pin_memory=True).pin_memory is True
    automatic = build_loader(_numbered(4), batch_size=2, shuffle=False, seed=0, num_workers=None)
    assert automatic.num_workers == default_workers()


@pytest.mark.parametrize(
    ("cpus", "local_world_size", "workers"),
    [
        (64, "1", MAX_DEFAULT_WORKERS),
        (64, "8", 7),
        (12, "5", 1),  # 12 // 5 - 1: whole workers
        (8, "4", 1),
        (2, "4", 1),
        (12, "", 11),
        (12, "0", 11),
    ],
)
def test_default_workers_share_the_cpus(
    monkeypatch: pytest.MonkeyPatch, cpus: int, local_world_size: str, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    found = default_workers()
    assert found == workers and isinstance(found, int)


def test_default_workers_without_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1
