"""Packed shards against the image folder they came from: decode+augment img/s per core, and time to start.

    OMP_NUM_THREADS=1 python bench/shard_throughput.py                 # 400 JPEGs at 500x375, 224-px photo crops
    OMP_NUM_THREADS=1 python bench/shard_throughput.py --start-images 1281167 --folder-files 20000

1. Throughput: the same generated JPEGs read through vitq's folder pipeline and through shards, same
   transforms (data.augment photo, 224 px), one process, one thread, no loader workers, timed in CPU seconds
   (per core, whatever else the machine runs); the two alternate round by round; medians and their ratio.
2. Start: a job's data setup (build_datasets + build_loader + the first epoch's order) on a generated index of
   --start-images images in 1,024 shards (sparse files of the sizes the index gives: the start reads none of
   their bytes), against listing and checking an image folder of --folder-files files, scaled to the same count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vit.config import DataSpec
from vit.data import build_datasets, build_loader, set_epoch
from vit.data.shard_index import INDEX_FILE, ShardEntry, ShardIndex, shard_name
from vit.data.shard_pack import pack


def photos(folder: Path, count: int, classes: int) -> None:
    """500x375 JPEGs (quality 90) of smooth random fields plus grain: about a photo's size and decode work."""
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        image = np.asarray(
            Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32
        )
        pixels = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"c{i % classes}" / f"{i}.jpg", quality=90)


def images_per_cpu_s(root: Path, dataset: str, batch: int) -> float:
    """Images per second of this process's CPU time: a per-core rate that other processes' load on a shared
    machine does not move (wall-clock rates there swing by 2x from round to round)."""
    spec = DataSpec(dataset=dataset, root=str(root), augment="photo", val_fraction=0.01)  # type: ignore[arg-type]
    train = build_datasets(spec, image_size=224, seed=0).train
    loader = build_loader(train, batch_size=batch, shuffle=True, seed=0, drop_last=True, num_workers=0)
    set_epoch(loader, 0)
    started, seen = time.process_time(), 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.process_time() - started)


def throughput(work: Path, count: int, rounds: int, batch: int) -> None:
    photos(work / "folder", count, classes=10)
    pack(str(work / "folder"), work / "shards", shard_bytes=32 << 20)
    rates: dict[str, list[float]] = {"imagefolder": [], "shards": []}
    images_per_cpu_s(work / "folder", "imagefolder", batch)  # warm the page cache and the decoder for both
    images_per_cpu_s(work / "shards", "shards", batch)
    for _ in range(rounds):
        for dataset, root in (("imagefolder", work / "folder"), ("shards", work / "shards")):
            rates[dataset].append(images_per_cpu_s(root, dataset, batch))
    folder, shards = (statistics.median(rates[name]) for name in ("imagefolder", "shards"))
    print(f"decode + photo crops at 224 px, one thread, {count} JPEGs 500x375, {rounds} rounds (median):")
    print(f"  folder {folder:7.1f} img per CPU-s   {[round(r) for r in rates['imagefolder']]}")
    print(f"  shards {shards:7.1f} img per CPU-s   {[round(r) for r in rates['shards']]}")
    print(f"  shards / folder = {shards / folder:.3f}")


def data_start(root: Path, dataset: str) -> float:
    started = time.perf_counter()
    spec = DataSpec(dataset=dataset, root=str(root))  # type: ignore[arg-type]
    train = build_datasets(spec, image_size=224, seed=0).train
    loader = build_loader(train, batch_size=256, shuffle=True, seed=0, drop_last=True, num_workers=0)
    set_epoch(loader, 0)
    len(loader)  # the epoch's order, as the trainer computes it before its first step
    return time.perf_counter() - started


def start(work: Path, images: int, folder_files: int) -> None:
    shards, classes = 1024, 1000
    root = work / "index"
    root.mkdir()
    rng = np.random.default_rng(0)
    per_shard = np.array_split(rng.integers(0, classes, images), shards)
    entries = []
    for number, labels in enumerate(per_shard):
        name = shard_name("train", number)
        size = len(labels) * 110_000
        with open(root / name, "wb") as file:
            file.truncate(size)  # sparse: no bytes written, the size the index gives
        entries.append(ShardEntry(name, size, "0" * 64, labels.tolist()))
    (root / INDEX_FILE).write_text(
        ShardIndex([f"n{i:08d}" for i in range(classes)], {"train": entries}).to_json()
    )
    index_mb = (root / INDEX_FILE).stat().st_size / 1e6
    shard_s = data_start(root, "shards")

    folder = work / "files"
    for i in range(folder_files):
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % classes}" / f"{i}.jpg").write_bytes(b"x")
    folder_s = data_start(folder, "imagefolder")
    print(f"start of a job's data (build_datasets, build_loader, first epoch's order), {images:,} images:")
    print(
        f"  shards: {shard_s:.2f} s (index.json {index_mb:.1f} MB, 1,024 shard sizes checked, no image listed)"
    )
    print(
        f"  folder: {folder_s:.2f} s for {folder_files:,} files -> {folder_s * images / folder_files:.0f} s "
        f"scaled to {images:,} (page cache warm; a shared filesystem's metadata calls cost more)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--start-images", type=int, default=1_281_167)
    parser.add_argument("--folder-files", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        throughput(Path(tmp), args.images, args.rounds, args.batch_size)
        start(Path(tmp), args.start_images, args.folder_files)


if __name__ == "__main__":
    main()
