"""WebDataset shards named by a brace pattern, with no index.json: their index is built by reading each tar's
member list once, and cached in the layout `vitq data pack` writes (vit.data.shard_index), so a pattern trains
exactly as a pack output does: counts give exact epochs and resume, labels give subsets and held-out splits.

    data.root: https://host/ds/train-{000000..001023}.tar     (or /data/ds/train-{0000..0099}.tar)

- A sample is the members sharing a key (the member name up to the first dot of its base name, as WebDataset
  groups them): one image (.jpg, .png, ...) and its label as text in `.cls`.
- Class names come from `classes.json` beside the shards (a JSON list, label i names class i) when there is
  one, else they are the labels' numbers ("0", "1", ...). The pattern is the training split; validation is a
  class-stratified held-out share (data.val_fraction), as for a folder without val/.
- The scan reads a local tar's headers only (it seeks over the images) and streams a remote one whole, once.
  The result is cached under VITQ_SHARD_CACHE (default ~/.cache/vitq/shard-index), keyed by the pattern and,
  for local shards, their sizes: a changed file is scanned again. Processes that start together (the ranks of
  a job) wait on one lock, so one scans and the others read its result. `vitq data index PATTERN` builds the
  cache ahead of a job (on a shared filesystem, once for every node).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from vit.config import shard_pattern
from vit.data.errors import DataError
from vit.data.files import IMAGE_SUFFIXES
from vit.data.shard_index import INDEX_FILE, ShardEntry, ShardIndex, members_json, members_name
from vit.data.shard_io import LocalLocation, Location, open_location

CACHE_ENV = "VITQ_SHARD_CACHE"
CLASSES_FILE = "classes.json"
LABEL_SUFFIX = ".cls"


def cache_root() -> Path:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else Path.home() / ".cache" / "vitq" / "shard-index"


def pattern_index(root: str) -> tuple[Location, Path]:
    """The shards' location and the directory of their cached index (built now if it is not there yet)."""
    parsed = shard_pattern(root)
    assert parsed is not None, root
    base, names = parsed
    location = open_location(base)
    if isinstance(location, LocalLocation):
        missing = [name for name in names if not (location.root / name).exists()]
        if missing:
            raise DataError(
                f"data.root {root}: {len(missing)} of its {len(names)} shards are missing, the first "
                f"{location.describe(missing[0])}"
            )
    # Local sizes are a stat each (and confine each shard, vit.data_roots); a missing shard is named here.
    sizes = [location.size(name) for name in names]
    key = hashlib.sha256(json.dumps([root, sizes]).encode()).hexdigest()[:24]
    cache = cache_root()
    directory = cache / key
    if (directory / INDEX_FILE).is_file():
        return location, directory
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if not (directory / INDEX_FILE).is_file():  # another process may have built it while this one waited
            _write_index(location, names, sizes, directory)
    return location, directory


def _write_index(location: Location, names: list[str], sizes: list[int | None], directory: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        entries = []
        for name, size in zip(names, sizes, strict=True):
            members, labels, end = scan_shard(location, name)
            (scratch / members_name(name)).write_text(members_json(members))
            # No checksum: that would read every byte of a local shard. A remote one's size is not checked.
            entries.append(ShardEntry(name, end if size is None else size, "", labels))
        class_names = _class_names(location, entries)
        (scratch / INDEX_FILE).write_text(ShardIndex(class_names, {"train": entries}).to_json())
        scratch.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def scan_shard(location: Location, name: str) -> tuple[list[tuple[str, int, int]], list[int], int]:
    """A shard's image members (name, data offset, size) and labels in sample order, and where its last member
    ends."""
    where = location.describe(name)
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    with location.stream(name) as file:
        try:
            # Seekable (local): headers only. A stream (HTTP): read through once.
            with tarfile.open(fileobj=file, mode="r:" if file.seekable() else "r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    path = PurePosixPath(info.name)
                    stem, _, extension = path.name.partition(".")
                    key, suffix = str(path.parent / stem), "." + extension.lower()
                    if suffix == LABEL_SUFFIX:
                        labels[key] = _label(tar, info, f"{where}/{info.name}")
                    elif suffix in IMAGE_SUFFIXES and key not in images:
                        images[key] = (info.name, info.offset_data, info.size)
                size = tar.offset
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"shard {where} is not a readable tar file: {err}") from err
    if not images:
        raise DataError(f"shard {where} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))} members)")
    unlabelled = [images[key][0] for key in images if key not in labels]
    if unlabelled:
        raise DataError(f"{where}/{unlabelled[0]} has no {LABEL_SUFFIX} member with its label")
    return list(images.values()), [labels[key] for key in images], size


def _label(tar: tarfile.TarFile, info: tarfile.TarInfo, where: str) -> int:
    member = tar.extractfile(info)
    assert member is not None  # a regular file
    text = member.read().decode("utf-8", errors="replace").strip()
    if not text.isdigit():
        raise DataError(f"{where}: a label must be a class number, got {text[:40]!r}")
    return int(text)


def _class_names(location: Location, entries: list[ShardEntry]) -> list[str]:
    count = 1 + max(max(entry.labels) for entry in entries)
    try:
        document = json.loads(location.read(CLASSES_FILE))
    except DataError:  # none beside the shards: the labels' numbers
        return [str(label) for label in range(count)]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{location.describe(CLASSES_FILE)} is not valid JSON: {err}") from err
    if not isinstance(document, list) or len(document) < count:
        raise DataError(
            f"{location.describe(CLASSES_FILE)} must be a JSON list of at least {count} class names "
            f"(the shards' labels reach {count - 1})"
        )
    return [str(name) for name in document]
