"""Training-step throughput of vitq's ViT against timm's VisionTransformer, same machine, same run.

    python bench/train_throughput.py                                   # CPU, fp32: Ti/4 @ 32 px, Ti/16 @ 224 px
    python bench/train_throughput.py --device cuda --precision bf16    # + B/16 @ 224 px; add --compile

A step is forward + cross-entropy + backward + AdamW. The two implementations alternate round by round (after a
warmup) so that load from other processes hits both alike; the table shows medians. MFU counts model FLOPs only
(3x the forward: 2 per multiply-add, per block 24·N·D² + 4·N²·D with the MLP at 4·D, plus patch embedding and
head) against the peak given and against a dense matmul measured here. Needs timm (`pip install .[bench]`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vit.model import ViTConfig, create_model, model_config

H100_BF16_DENSE_TFLOPS = 989.0  # datasheet, SXM


@dataclass(frozen=True)
class Case:
    variant: str
    image_size: int
    batch_size: int
    num_classes: int


CPU_CASES = (Case("Ti/4", 32, 128, 10), Case("Ti/16", 224, 16, 1000))
CUDA_CASES = (Case("Ti/4", 32, 1024, 10), Case("Ti/16", 224, 512, 1000), Case("B/16", 224, 256, 1000))


def forward_flops(cfg: ViTConfig) -> float:
    """Model FLOPs of one image's forward pass (2 per multiply-add)."""
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d  # qkv + proj + MLP; QK^T and AV
    patch_embed = 2 * (n - 1) * cfg.in_chans * cfg.patch_size**2 * d
    return cfg.depth * block + patch_embed + 2 * d * cfg.num_classes


def timm_model(cfg: ViTConfig) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
    )


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    size, reps = (8192, 20) if device.type == "cuda" else (1024, 8)
    a, b = (
        torch.randn(size, size, device=device, dtype=dtype),
        torch.randn(size, size, device=device, dtype=dtype),
    )
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: nn.Module, case: Case, device: torch.device, bf16: bool, compile: bool
) -> Callable[[], None]:
    model.to(device).train()
    # Fused AdamW where it has a kernel; the same optimizer for both implementations either way.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile else model
    images = torch.randn(case.batch_size, 3, case.image_size, case.image_size, device=device)
    labels = torch.randint(0, case.num_classes, (case.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def run_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    cfg = model_config(case.variant, num_classes=case.num_classes, image_size=case.image_size)
    models = {
        "vitq": create_model(case.variant, num_classes=case.num_classes, image_size=case.image_size),
        "timm": timm_model(cfg),
    }
    bf16 = args.precision == "bf16"
    steps = {name: train_step(m, case, device, bf16, args.compile) for name, m in models.items()}
    per_round = args.steps_per_round or (20 if device.type == "cuda" else 2)
    for step in steps.values():  # warmup: allocator, kernels, autotuning and compilation
        for _ in range(args.warmup or (10 if device.type == "cuda" else 1)):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            samples[name].append(images_per_second(step, case.batch_size, per_round, device))
    for model in models.values():
        model.to("cpu")
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=0, help="0: 2 on CPU, 20 on CUDA")
    parser.add_argument("--warmup", type=int, default=0, help="steps per model; 0: 1 on CPU, 10 on CUDA")
    parser.add_argument("--only", default="", help='run one case, e.g. "B/16"')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 training on a GPU would use
        torch.backends.cudnn.allow_tf32 = True
    matmul_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    measured = measured_matmul_tflops(device, matmul_dtype)
    peak = H100_BF16_DENSE_TFLOPS if device.type == "cuda" and args.precision == "bf16" else None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{name}; torch {torch.__version__}; {args.precision}; compile={args.compile}", flush=True)
    print(f"measured dense matmul: {measured * 1000:.1f} GFLOP/s ({matmul_dtype})")
    header = f"{'config':<22} {'impl':<5} {'img/s':>9} {'MFU meas.':>9}"
    header += f" {'MFU peak':>9}" if peak else ""
    print(header + f" {'vitq/timm':>9}", flush=True)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    for case in cases:
        if args.only and case.variant != args.only:
            continue
        flops = 3 * forward_flops(
            model_config(case.variant, num_classes=case.num_classes, image_size=case.image_size)
        )
        rates = run_case(case, args, device)
        label = f"{case.variant} {case.image_size}px b{case.batch_size}"
        for impl, rate in rates.items():
            achieved = rate * flops / 1e12
            line = f"{label:<22} {impl:<5} {rate:>9.1f} {achieved / measured:>9.1%}"
            line += f" {achieved / peak:>9.1%}" if peak else ""
            ratio = f"{rates['vitq'] / rates['timm']:>9.3f}" if impl == "vitq" else ""
            print(line + f" {ratio}", flush=True)


if __name__ == "__main__":
    main()
