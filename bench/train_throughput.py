"""Training-step throughput of vitq's ViT against timm's VisionTransformer, same machine, same run.

    python bench/train_throughput.py                                   # CPU, fp32: Ti/4 @ 32 px, Ti/16 @ 224 px
    python bench/train_throughput.py --device cuda --precision bf16    # + B/16 @ 224 px; add --compile
    python bench/train_throughput.py --device cuda --precision bf16-params --compile --only B/16 \
        --batch-size 512     # fastest B/16 setting measured: H100, torch 2.11, 3,590 img/s (timm 3,606)

Options that change what a step does (each applies to vitq and timm alike):
  --precision bf16         autocast to bf16; fp32 parameters, gradients and AdamW state (mixed precision).
  --precision bf16-params  parameters, gradients, AdamW state, activations and inputs all bf16, no autocast:
                           no casts and half the bytes in every elementwise op, but no fp32 master weights
                           (small updates can round away), so it measures speed, not a training recipe.
  --sdpa BACKEND           restrict F.scaled_dot_product_attention to one backend (flash, efficient, cudnn,
                           math); default: PyTorch picks (on an H100, eager B/16: cudnn = the default).
  --compile [MODE]         torch.compile both models; MODE as torch.compile's mode, e.g.
                           max-autotune-no-cudagraphs (GEMM autotuning: minutes of compiling).
  --batch-size N           images per step for every case run (default: the case's own).
  --impl vitq|timm         time one implementation only (quicker sweeps; no ratio column).

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
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vit.model import ViTConfig, create_model, model_config

H100_BF16_DENSE_TFLOPS = 989.0  # datasheet, SXM
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


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
    model: nn.Module, case: Case, device: torch.device, precision: str, compile_mode: str | None
) -> Callable[[], None]:
    # bf16-params: the whole model and its inputs in bf16 (no autocast); otherwise fp32 parameters.
    dtype = torch.bfloat16 if precision == "bf16-params" else torch.float32
    model.to(device=device, dtype=dtype).train()
    # Fused AdamW where it has a kernel; the same optimizer for both implementations either way.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    images = torch.randn(case.batch_size, 3, case.image_size, case.image_size, device=device, dtype=dtype)
    labels = torch.randint(0, case.num_classes, (case.batch_size,), device=device)
    autocast = precision == "bf16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext():
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


def run_case(
    case: Case, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """Median img/s per implementation, and each one's warmup seconds (compilation included)."""
    cfg = model_config(case.variant, num_classes=case.num_classes, image_size=case.image_size)
    builders: dict[str, Callable[[], nn.Module]] = {
        "vitq": lambda: create_model(case.variant, num_classes=case.num_classes, image_size=case.image_size),
        "timm": lambda: timm_model(cfg),
    }
    models = {name: build() for name, build in builders.items() if args.impl in ("both", name)}
    steps = {name: train_step(m, case, device, args.precision, args.compile) for name, m in models.items()}
    per_round = args.steps_per_round or (20 if device.type == "cuda" else 2)
    warmup_seconds = {}
    for name, step in steps.items():  # warmup: allocator, kernels, autotuning and compilation
        start = time.perf_counter()
        for _ in range(args.warmup or (10 if device.type == "cuda" else 1)):
            step()
        sync(device)
        warmup_seconds[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            samples[name].append(images_per_second(step, case.batch_size, per_round, device))
    for model in models.values():
        model.to("cpu")
    return {name: statistics.median(values) for name, values in samples.items()}, warmup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16-params"], default="fp32")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help="torch.compile the models, with this mode (default: torch's default mode)",
    )
    parser.add_argument("--sdpa", choices=sorted(SDPA_BACKENDS), default=None, help="one SDPA backend only")
    parser.add_argument("--batch-size", type=int, default=0, help="images per step; 0: each case's own")
    parser.add_argument("--impl", choices=["both", "vitq", "timm"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=0, help="0: 2 on CPU, 20 on CUDA")
    parser.add_argument("--warmup", type=int, default=0, help="steps per model; 0: 1 on CPU, 10 on CUDA")
    parser.add_argument("--only", default="", help='run one case, e.g. "B/16"')
    args = parser.parse_args()
    if args.batch_size < 0:
        parser.error(f"--batch-size must be positive (0: each case's own), got {args.batch_size}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 training on a GPU would use
        torch.backends.cudnn.allow_tf32 = True
    matmul_dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    measured = measured_matmul_tflops(device, matmul_dtype)
    peak = H100_BF16_DENSE_TFLOPS if device.type == "cuda" and matmul_dtype == torch.bfloat16 else None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{name}; torch {torch.__version__}; {args.precision}; compile={args.compile or 'off'}; "
        f"sdpa={args.sdpa or 'auto'}; impl={args.impl}",
        flush=True,
    )
    print(f"measured dense matmul: {measured * 1000:.1f} GFLOP/s ({matmul_dtype})")
    header = f"{'config':<22} {'impl':<5} {'img/s':>9} {'MFU meas.':>9}"
    header += f" {'MFU peak':>9}" if peak else ""
    print(header + f" {'warmup s':>9} {'vitq/timm':>9}", flush=True)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    for case in cases:
        if args.only and case.variant != args.only:
            continue
        if args.batch_size:
            case = replace(case, batch_size=args.batch_size)
        flops = 3 * forward_flops(
            model_config(case.variant, num_classes=case.num_classes, image_size=case.image_size)
        )
        with sdpa_kernel(SDPA_BACKENDS[args.sdpa]) if args.sdpa else nullcontext():
            rates, warmup_seconds = run_case(case, args, device)
        label = f"{case.variant} {case.image_size}px b{case.batch_size}"
        for impl, rate in rates.items():
            achieved = rate * flops / 1e12
            line = f"{label:<22} {impl:<5} {rate:>9.1f} {achieved / measured:>9.1%}"
            line += f" {achieved / peak:>9.1%}" if peak else ""
            line += f" {warmup_seconds[impl]:>9.1f}"
            ratio = f"{rates['vitq'] / rates['timm']:>9.3f}" if impl == "vitq" and len(rates) == 2 else ""
            print(line + f" {ratio}", flush=True)


if __name__ == "__main__":
    main()
