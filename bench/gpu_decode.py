"""The training data path with JPEGs decoded on the device (`data.decode: device`) against the CPU loader
(`data.decode: loader`): images per second of photo-augmented 224-px batches, as the trainer iterates them.

    python bench/gpu_decode.py                                   # on a GPU: both paths (bench/gpu_check.sh 7)
    python bench/gpu_decode.py --device cpu --workers 1          # the device path run on the CPU, for comparison

The images are 500x375 JPEGs (quality 90, bench/shard_throughput.py's photos) in an image folder, read from the
page cache after the first pass. The loader path decodes and crops in `--workers` CPU processes (default: what
a job would use here, vit.data.loader.default_workers); the device path's workers only read bytes, and the
training process decodes each batch with nvJPEG and crops on the GPU. Without a GPU and no --device cpu, it
prints "no GPU" and stops.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.shard_throughput import photos
from vit.config import DataSpec
from vit.data import build_datasets, training_augmentation
from vit.data.device_batches import build_train_batches
from vit.data.loader import default_workers, set_epoch


def images_per_s(root: Path, decode: str, args: argparse.Namespace, device: torch.device) -> float:
    spec = DataSpec(dataset="imagefolder", root=str(root), augment="photo", decode=decode, val_fraction=0.01)  # type: ignore[arg-type]
    train = build_datasets(spec, image_size=224, seed=0).train
    batches = build_train_batches(
        train,
        batch_size=args.batch_size,
        image_size=224,
        augmentation=training_augmentation(spec),
        seed=0,
        num_workers=args.workers,
        rank=0,
        world_size=1,
        device=device,
        decode=decode,
    )
    best = 0.0
    for epoch in range(args.epochs):  # the first warms the page cache, the workers and nvJPEG
        set_epoch(batches, epoch)
        started, seen = time.perf_counter(), 0
        for images, _ in batches:
            images = images.to(device, non_blocking=True)
            seen += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, seen / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: as a job)")
    parser.add_argument("--epochs", type=int, default=3, help="passes; the best is reported")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: nothing to measure (--device cpu runs the device path on the CPU)")
        return
    args.workers = default_workers() if args.workers is None else args.workers
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        photos(Path(tmp), args.images, classes=8)
        print(
            f"{args.images} JPEGs 500x375 -> photo crops at 224 px, batch {args.batch_size}, {args.workers} workers"
        )
        for decode in ("loader", "device"):
            rate = images_per_s(Path(tmp), decode, args, device)
            where = "CPU workers" if decode == "loader" else f"workers read bytes, decoded on {device}"
            print(f"  decode: {decode:6s} ({where}): {rate:8.1f} img/s")


if __name__ == "__main__":
    main()
