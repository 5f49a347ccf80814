"""The layout `vitq data pack` writes and training reads: the one place that knows its file names and formats.

    OUT/index.json                 class names; per split, its shards: name, bytes, sha256, image count, labels
    OUT/train-000000.tar ...       WebDataset samples: <key>.cls (the label as text) and <key>.<jpg|png|...>
    OUT/train-000000.tar.idx       that shard's image members: [member name, data offset, size] per image
    OUT/val-000000.tar ...         (when the source has a validation split)

index.json is all a job reads at start (no listing, no per-image check): counts give exact epochs, labels give
class-stratified subsets and held-out splits. A shard's .idx is read by a loader process when it first reads
that shard, so a 1,024-shard dataset opens with one small file, however many images it holds. The .tar files are
plain WebDataset shards: any WebDataset reader streams them as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vit.data.errors import DataError
from vit.data.shard_io import Location

INDEX_FILE = "index.json"
FORMAT = "vitq-shards"
VERSION = 1
SPLITS = ("train", "val")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def members_name(shard: str) -> str:
    return shard + ".idx"


@dataclass(frozen=True)
class ShardEntry:
    name: str
    bytes: int
    sha256: str
    labels: list[int]

    @property
    def count(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ShardIndex:
    class_names: list[str]
    splits: dict[str, list[ShardEntry]]

    def to_json(self) -> str:
        splits = {
            split: [
                {"name": s.name, "bytes": s.bytes, "sha256": s.sha256, "count": s.count, "labels": s.labels}
                for s in shards
            ]
            for split, shards in self.splits.items()
        }
        document = {"format": FORMAT, "version": VERSION, "class_names": self.class_names, "splits": splits}
        return json.dumps(document, separators=(",", ":")) + "\n"


def read_index(location: Location) -> ShardIndex:
    """index.json under the location; DataError saying what is wrong with it."""
    where = location.describe(INDEX_FILE)
    try:
        document = json.loads(location.read(INDEX_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{where} is not valid JSON ({err}): was it written by `vitq data pack`?") from err
    except DataError as err:
        raise DataError(f"{err}: data.root must hold the {INDEX_FILE} that `vitq data pack` wrote") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DataError(f"{where} is not a {FORMAT} index (written by `vitq data pack`)")
    if document.get("version") != VERSION:
        raise DataError(f"{where} has format version {document.get('version')}; this vitq reads {VERSION}")
    try:
        class_names = [str(name) for name in document["class_names"]]
        splits = {
            split: [_entry(shard, len(class_names)) for shard in shards]
            for split, shards in document["splits"].items()
        }
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where} is malformed: {err}") from err
    if not splits.get("train"):
        raise DataError(f"{where} has no training shards")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DataError(f"{where} has unknown splits {unknown}; expected {list(SPLITS)}")
    return ShardIndex(class_names, splits)


def _entry(shard: dict[str, Any], num_classes: int) -> ShardEntry:
    labels = [int(label) for label in shard["labels"]]
    if len(labels) != int(shard["count"]):
        raise ValueError(f"{shard['name']} lists {len(labels)} labels for {shard['count']} images")
    if labels and not 0 <= min(labels) <= max(labels) < num_classes:
        raise ValueError(f"{shard['name']} has labels outside the {num_classes} classes")
    return ShardEntry(str(shard["name"]), int(shard["bytes"]), str(shard["sha256"]), labels)


def read_members(location: Location, shard: str) -> list[tuple[str, int, int]]:
    """The shard's image members as (name, data offset, size), in sample order."""
    where = location.describe(members_name(shard))
    try:
        rows = json.loads(location.read(members_name(shard)))
        return [(str(name), int(offset), int(size)) for name, offset, size in rows]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise DataError(f"{where} is malformed ({err}): repack, or run `vitq data check`") from err


def members_json(members: list[tuple[str, int, int]]) -> str:
    return json.dumps([list(member) for member in members], separators=(",", ":")) + "\n"
