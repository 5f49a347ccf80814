"""`vitq data pack`: an image folder, or CIFAR/Pets/Flowers in torchvision's layout, written as shards.

Images keep their encoded bytes (an image folder's JPEG is copied, not recompressed; CIFAR's arrays become PNG).
Each split is written in a seeded random order, so every shard mixes the classes: a loader that reads a few
shards at a time still sees all classes in every batch. The layout is vit.data.shard_index's.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image, UnidentifiedImageError

from vit.data.errors import DataError
from vit.data.files import TORCHVISION, existing_root, folder_with_split, labels_of, open_torchvision
from vit.data.shard_index import INDEX_FILE, ShardEntry, ShardIndex, members_json, members_name, shard_name

SOURCES = ("imagefolder", *TORCHVISION)
# Tar entries' modification time: fixed, so that packing the same source twice gives identical shards.
MTIME = 0.0


@dataclass(frozen=True)
class SourceImage:
    """One image to pack: read() gives its encoded bytes and their extension (jpg, png, ...)."""

    read: Callable[[], tuple[bytes, str]]
    label: int
    where: str


@dataclass(frozen=True)
class Progress:
    split: str
    images: int
    total: int
    shards: int
    bytes: int
    seconds: float


def pack(
    source: str,
    out: Path,
    *,
    dataset: str = "imagefolder",
    shard_bytes: int = 1 << 30,
    max_images: int | None = None,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
) -> ShardIndex:
    """Pack `source` into `out` (created; it must be empty): shards of at most shard_bytes (or max_images images;
    a single larger image gets a shard of its own), a .idx per shard, and index.json written last."""
    if dataset not in SOURCES:
        raise DataError(f"cannot pack {dataset!r}: one of {', '.join(SOURCES)}")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: pack into a new directory")
    splits, class_names = _source_splits(source, dataset)
    out.mkdir(parents=True, exist_ok=True)
    shuffled = random.Random(seed)
    index: dict[str, list[ShardEntry]] = {}
    for split, images in splits.items():
        order = list(images)
        shuffled.shuffle(order)
        index[split] = _write_split(out, split, order, shard_bytes, max_images, progress)
    packed = ShardIndex(class_names, index)
    (out / INDEX_FILE).write_text(packed.to_json())
    return packed


def _write_split(
    out: Path,
    split: str,
    images: list[SourceImage],
    shard_bytes: int,
    max_images: int | None,
    progress: Callable[[Progress], None] | None,
) -> list[ShardEntry]:
    started = time.monotonic()
    shards: list[ShardEntry] = []
    written = 0
    for batch in _shard_batches(images, shard_bytes, max_images):
        path = out / shard_name(split, len(shards))
        with wds.TarWriter(str(path), mtime=MTIME) as writer:
            for number, (image, data, ext) in enumerate(batch, start=written):
                writer.write({"__key__": f"{number:08d}", "cls": str(image.label), ext: data})
        written += len(batch)
        shards.append(_finish_shard(path, [image.label for image, _, _ in batch]))
        if progress is not None:
            done = sum(shard.bytes for shard in shards)
            progress(Progress(split, written, len(images), len(shards), done, time.monotonic() - started))
    return shards


def _shard_batches(
    images: list[SourceImage], shard_bytes: int, max_images: int | None
) -> Iterator[list[tuple[SourceImage, bytes, str]]]:
    batch: list[tuple[SourceImage, bytes, str]] = []
    size = 0
    for image in images:
        data, ext = image.read()
        _check_image(data, image.where)
        # A sample costs its bytes and three 512-byte tar headers/paddings, about.
        cost = len(data) + 1536
        if batch and (size + cost > shard_bytes or (max_images is not None and len(batch) == max_images)):
            yield batch
            batch, size = [], 0
        batch.append((image, data, ext))
        size += cost
    if batch:
        yield batch


def _check_image(data: bytes, where: str) -> None:
    """The bytes are an image PIL can open (its header; decoding every pixel is `check`'s job)."""
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"cannot read image {where}: {err}; remove or replace it, then pack again") from err


def _finish_shard(path: Path, labels: list[int]) -> ShardEntry:
    """The written shard's member table (.idx) and its index entry."""
    members = []
    with tarfile.open(path) as tar:
        for info in tar:
            if not info.name.endswith(".cls"):
                members.append((info.name, info.offset_data, info.size))
    assert len(members) == len(labels), path  # one image member per sample, as written above
    (path.parent / members_name(path.name)).write_text(members_json(members))
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return ShardEntry(path.name, path.stat().st_size, digest.hexdigest(), labels)


def _source_splits(source: str, dataset: str) -> tuple[dict[str, list[SourceImage]], list[str]]:
    root = existing_root(source)
    if dataset == "imagefolder":
        train, val, class_names = folder_with_split(root)
        splits = {"train": _files(train.paths, train.labels.tolist())}
        if val is not None:
            splits["val"] = _files(val.paths, val.labels.tolist())
        return splits, class_names
    _, _, train_splits, test_split = TORCHVISION[dataset]
    train_parts = [open_torchvision(dataset, root, split, False, None) for split in train_splits]
    test = open_torchvision(dataset, root, test_split, False, None)
    class_names = list(train_parts[0].classes)  # type: ignore[attr-defined]
    train_images = [image for part in train_parts for image in _torchvision_images(part)]
    return {"train": train_images, "val": _torchvision_images(test)}, class_names


def _files(paths: list[Path], labels: list[int]) -> list[SourceImage]:
    return [
        SourceImage(_FileBytes(path), label, str(path)) for path, label in zip(paths, labels, strict=True)
    ]


class _FileBytes:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> tuple[bytes, str]:
        return self.path.read_bytes(), self.path.suffix.lower().lstrip(".")


class _ArrayPng:
    """CIFAR keeps its images as one array: each is encoded as PNG (lossless)."""

    def __init__(self, dataset: object, index: int) -> None:
        self.dataset = dataset
        self.index = index

    def __call__(self) -> tuple[bytes, str]:
        buffer = io.BytesIO()
        Image.fromarray(self.dataset.data[self.index]).save(buffer, format="PNG")  # type: ignore[attr-defined]
        return buffer.getvalue(), "png"


def _torchvision_images(dataset: object) -> list[SourceImage]:
    labels = labels_of(dataset).tolist()  # type: ignore[arg-type]
    name = type(dataset).__name__
    # Pets and Flowers keep a path per image (privately): their JPEG bytes are copied as they are.
    paths = getattr(dataset, "_images", None) or getattr(dataset, "_image_files", None)
    if paths is not None:
        return _files([Path(path) for path in paths], labels)
    return [
        SourceImage(_ArrayPng(dataset, index), label, f"{name} image {index}")
        for index, label in enumerate(labels)
    ]
