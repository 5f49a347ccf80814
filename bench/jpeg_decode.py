"""JPEG decoding of shard-sized photos: PIL (what vit.data decodes with) against torchvision.io.decode_jpeg on
the CPU and, with --device cuda, batched on the GPU (nvJPEG); pixel agreement with PIL and images/s of each.

    OMP_NUM_THREADS=1 python bench/jpeg_decode.py                  # CPU: PIL vs torchvision.io
    python bench/jpeg_decode.py --device cuda --batch-size 256     # + nvJPEG, batched (bench/gpu_check.sh 6)

The images are 500x375 JPEGs (quality 90) as bench/shard_throughput.py makes them, held in memory as bytes (what
a shard read gives), so only decoding is timed. Agreement is the largest and the mean absolute difference per
8-bit channel: libjpeg-turbo (PIL and torchvision's CPU path) and nvJPEG may round the inverse DCT and chroma
upsampling differently, so a difference of a few levels is expected and is reported, not hidden.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from bench.shard_throughput import photos


def timed(label: str, count: int, work: object) -> object:
    started = time.perf_counter()
    result = work()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    print(f"  {label:34s} {count / seconds:8.1f} img/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        photos(Path(tmp), args.images, classes=1)
        encoded = [path.read_bytes() for path in sorted(Path(tmp).rglob("*.jpg"))]
    datas = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    print(f"{len(encoded)} JPEGs 500x375, one CPU thread:")

    def pil() -> list[torch.Tensor]:
        return [
            torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
            for data in encoded
        ]

    reference = timed("PIL", len(encoded), pil)
    cpu = timed(
        "torchvision.io.decode_jpeg (CPU)",
        len(encoded),
        lambda: [decode_jpeg(d, ImageReadMode.RGB) for d in datas],
    )
    agreement("torchvision CPU vs PIL", reference, cpu)  # type: ignore[arg-type]
    if args.device == "cuda":
        device = torch.device("cuda")
        decode_jpeg(
            datas[: args.batch_size], ImageReadMode.RGB, device=device
        )  # nvJPEG's handles and buffers

        def gpu() -> list[torch.Tensor]:
            out: list[torch.Tensor] = []
            for start in range(0, len(datas), args.batch_size):
                out.extend(
                    decode_jpeg(datas[start : start + args.batch_size], ImageReadMode.RGB, device=device)
                )
            torch.cuda.synchronize(device)
            return out

        decoded = timed(f"nvJPEG, batches of {args.batch_size}", len(encoded), gpu)
        agreement("nvJPEG vs PIL", reference, [image.cpu() for image in decoded])  # type: ignore[union-attr]


def agreement(label: str, reference: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    diffs = [(a.int() - b.int()).abs() for a, b in zip(reference, other, strict=True)]
    largest = max(int(d.max()) for d in diffs)
    mean = float(torch.cat([d.flatten().float() for d in diffs]).mean())
    same = sum(int(d.max()) == 0 for d in diffs)
    print(f"  {label}: max |diff| {largest}, mean {mean:.4f} levels, {same}/{len(diffs)} images identical")


if __name__ == "__main__":
    main()
