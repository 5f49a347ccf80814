"""Where a training step's time goes: torch.profiler over a few model-only steps, the top kernels and the gaps.

    python bench/profile_step.py --device cuda --variant B/16 --image-size 224 --batch-size 256 \\
        --precision bf16 --compile          # add --trace trace.json.gz for chrome://tracing / Perfetto

Prints the step time, the top kernels by total device time (CPU ops on the CPU), and on CUDA the time the GPU sat
idle between kernels within the profiled steps: idle time is what launch overhead, host syncs and a stalled input
pipeline cost; kernel time is what faster kernels (fp8, fusion) can win. The step is bench/job_throughput.py's
model-only step: forward + cross-entropy + backward + the spec's optimizer on one fixed batch.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from vit.config import JobSpec
from vit.model import create_model
from vit.optim import build_optimizer
from vit.precision import autocast, convert_to_fp8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variant", default="Ti/4")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp8"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--trace", type=Path, help="write a chrome trace (gzipped when the name ends in .gz)")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = JobSpec.model_validate(
        {
            "kind": "pretrain",
            "model": {"variant": args.variant, "image_size": args.image_size},
            "train": {"batch_size": args.batch_size, "precision": args.precision},
        }
    ).resolved()
    model = create_model(args.variant, num_classes=args.classes, image_size=args.image_size).to(device)
    if args.precision == "fp8":
        convert_to_fp8(model)
    optimizer = build_optimizer(model, spec.optim, device)
    forward = torch.compile(model) if args.compile else model
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)

    def step() -> None:
        with autocast(args.precision, device):
            loss = F.cross_entropy(forward(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        seconds = (time.perf_counter() - started) / args.steps
    print(
        f"{args.variant} @ {args.image_size} px, batch {args.batch_size}, {args.precision}, "
        f"compile {args.compile}: {seconds * 1000:.1f} ms/step under the profiler, "
        f"{args.batch_size / seconds:,.0f} img/s"
    )
    sort_by = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.top, max_name_column_width=70))
    if device.type == "cuda":
        busy, idle, kernels = gpu_busy_and_idle(prof)
        span = busy + idle
        print(
            f"GPU over the profiled steps: {kernels} kernels, busy {busy / 1e3:.1f} ms, idle between kernels "
            f"{idle / 1e3:.1f} ms ({idle / max(span, 1e-9):.1%} of the span)"
        )
    if args.trace:
        write_trace(prof, args.trace)


def gpu_busy_and_idle(prof: profile) -> tuple[float, float, int]:
    """(µs inside kernels, µs between them, kernel count) from the first kernel's start to the last one's end,
    over the union of kernel intervals (overlapping streams counted once)."""
    intervals = sorted(
        (event.time_range.start, event.time_range.end)
        for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy = idle = 0.0
    end = None
    for start, stop in intervals:
        if end is not None and start > end:
            idle += start - end
        if end is None or start > end:
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, idle, len(intervals)


def write_trace(prof: profile, path: Path) -> None:
    if path.suffix != ".gz":
        prof.export_chrome_trace(str(path))
        return
    with tempfile.NamedTemporaryFile(suffix=".json") as raw:
        prof.export_chrome_trace(raw.name)
        with open(raw.name, "rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
