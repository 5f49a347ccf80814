"""Packed shards as a map-style dataset: item i of a split is read from its tar shard by offset (the random
access of WebDataset's indexed form, wids), so the sampler of vit.data.loader decides the order as it does for
folders: every image once per epoch, an order fixed by (seed, epoch), exact mid-epoch resume, subsets and
held-out splits by index. `shard_of` lets the sampler keep reads local (a few shards at a time).

Nothing is listed or opened per image at start: index.json gives counts and labels, and each local shard's size
is compared with the index (a truncated or replaced shard is named then, not at the step that reaches it).
"""

from __future__ import annotations

import bisect
import io
import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vit.config import shard_pattern
from vit.data.errors import DataError
from vit.data.shard_index import ShardEntry, read_index, read_members
from vit.data.shard_io import LocalLocation, Location, open_location
from vit.data.shard_scan import pattern_index
from vit.data.transforms import Transform

# Member tables kept per process; as MAX_OPEN_FILES, more than a shuffle window touches.
MEMBER_TABLES = 64


def decode_rgb(data: bytes, where: str) -> Image.Image:
    """An encoded image's bytes decoded to RGB, or DataError naming where they came from."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"cannot decode image {where}: {err}") from err


class ShardSplit:
    """One split's shards (shared by every selection of it): where they are, their counts and labels, and the
    member tables this process has read."""

    def __init__(
        self, location: Location, root: str, shards: list[ShardEntry], tables: Location | None = None
    ) -> None:
        self.location = location
        self.tables = (
            tables or location
        )  # where the shards' member tables (.idx) are: beside them, or a cache
        self.root = root
        self.shards = shards
        # Item i of the split is in the shard n with starts[n] <= i < starts[n + 1].
        self.starts = [0, *itertools.accumulate(shard.count for shard in shards)]
        self.labels = torch.tensor([label for shard in shards for label in shard.labels], dtype=torch.int64)
        self._members: OrderedDict[int, list[tuple[str, int, int]]] = OrderedDict()

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_members": OrderedDict()}

    def __len__(self) -> int:
        return self.starts[-1]

    def shard_of(self, items: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(torch.tensor(self.starts), items, right=True) - 1

    def check_sizes(self) -> None:
        """Each shard's size against the index, where that costs a stat (local files)."""
        for shard in self.shards:
            size = self.location.size(shard.name)
            if size is not None and size != shard.bytes:
                raise DataError(
                    f"shard {self.location.describe(shard.name)} is {size} bytes, the index says {shard.bytes}: "
                    f"truncated or changed since it was packed (`vitq data check {self.root}` lists the damage)"
                )

    def read(self, item: int) -> tuple[bytes, str]:
        """The encoded image of item `item` and its name for messages (shard/member)."""
        number = bisect.bisect_right(self.starts, item) - 1
        shard = self.shards[number]
        members = self._member_table(number)
        name, offset, size = members[item - self.starts[number]]
        where = f"{self.location.describe(shard.name)}/{name}"
        data = self.location.read(shard.name, offset, size)
        if len(data) != size:
            raise DataError(
                f"shard {self.location.describe(shard.name)} is truncated: member {name} needs bytes "
                f"{offset}..{offset + size} and the shard ends before (`vitq data check {self.root}`)"
            )
        return data, where

    def _member_table(self, number: int) -> list[tuple[str, int, int]]:
        members = self._members.get(number)
        if members is None:
            shard = self.shards[number]
            members = read_members(self.tables, shard.name)
            if len(members) != shard.count:
                raise DataError(
                    f"{self.location.describe(shard.name)}: its member table lists {len(members)} images, "
                    f"the index {shard.count}: repack this dataset"
                )
            self._members[number] = members
            if len(self._members) > MEMBER_TABLES:
                self._members.popitem(last=False)
        self._members.move_to_end(number)
        return members


class TarShards(Dataset[tuple[torch.Tensor, int]]):
    """Some images of a ShardSplit (all, a subset, a held-out part), decoded on read."""

    def __init__(self, split: ShardSplit, indices: torch.Tensor, transform: Transform) -> None:
        self.split = split
        self.indices = indices
        self.labels = split.labels[indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, where = self.split.read(int(self.indices[index]))
        return self.transform(decode_rgb(data, where)), int(self.labels[index])

    def encoded(self, index: int) -> tuple[bytes, str]:
        """The image's bytes as packed, and its shard/member for messages (decoding on the device)."""
        return self.split.read(int(self.indices[index]))

    @property
    def shard_of(self) -> torch.Tensor:
        """Each item's shard number: the sampler reads a few shards at a time."""
        return self.split.shard_of(self.indices)

    def select(self, indices: torch.Tensor) -> TarShards:
        return TarShards(self.split, self.indices[indices], self.transform)

    def with_transform(self, transform: Transform) -> TarShards:
        return TarShards(self.split, self.indices, transform)


@dataclass(frozen=True)
class PackedSplits:
    train: ShardSplit
    val: ShardSplit | None
    class_names: list[str]


def open_packed(root: str) -> PackedSplits:
    """The splits under data.root (a directory or an http(s) URL holding index.json, or a brace pattern of shards:
    vit.data.shard_scan): the index read, local shard sizes checked."""
    tables: Location | None = None
    if shard_pattern(root) is None:
        location = open_location(root)
        index = read_index(location)
    else:
        location, cached = pattern_index(root)
        tables = LocalLocation(cached)
        index = read_index(tables)
    splits = {name: ShardSplit(location, root, shards, tables) for name, shards in index.splits.items()}
    for split in splits.values():
        split.check_sizes()
    val = splits.get("val")
    return PackedSplits(splits["train"], val if val is not None and len(val) else None, index.class_names)


def whole(split: ShardSplit, transform: Transform) -> TarShards:
    return TarShards(split, torch.arange(len(split)), transform)
