"""Model FLOPs per training image and the device's peak rate: the two halves of MFU (model FLOPs utilization).

    mfu = training_flops_per_image(cfg) x images/s / (peak FLOP/s x processes)

Model FLOPs count the matmuls only, 2 per multiply-add: patch embedding, qkv, the attention output projection,
the MLP, the head, and attention's own QK^T and AV (both counted; they are matmuls the GPU runs, about 4 % of
B/16 @ 224 px). LayerNorm, GELU, softmax, biases and the optimizer are not counted. Training is 3x the forward
(backward: the gradients of inputs and weights, one forward's worth each). Recomputation, if any, is not model
FLOPs (that would be hardware FLOPs), so MFU is comparable across implementations.

The peak: a GPU named in DATASHEET_BF16_TFLOPS is held to its datasheet dense bf16 rate, whatever the job's
precision (fp32 jobs on a GPU are far from its limit, and that is what MFU should say; fp8 jobs are measured
against the same bf16 rate, so their MFU can pass 100 % of it in principle). Another GPU, or the CPU, is held to a
large matmul measured here once per process (bf16 on a GPU, fp32 on the CPU, as the CPU jobs run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vit.model import ViTConfig

# Dense (no sparsity) bf16 tensor-core rates from NVIDIA's datasheets, TFLOP/s. Matched as substrings of
# torch.cuda.get_device_name in this order (the more specific name first: "H100 PCIe" before "H100").
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),  # SXM; also GH200
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def forward_flops(cfg: ViTConfig) -> int:
    """Model FLOPs of one image's forward pass (2 per multiply-add; see the module docstring for what counts)."""
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    linear = 2 * n * (3 * d * d + d * d + 2 * d * m)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * n * n * d  # QK^T and AV, all heads together
    patch_embed = 2 * (n - 1) * cfg.in_chans * cfg.patch_size**2 * d
    return cfg.depth * (linear + attention) + patch_embed + 2 * d * cfg.num_classes


def training_flops_per_image(cfg: ViTConfig) -> int:
    return 3 * forward_flops(cfg)


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    # How the rate was found, for the log: "datasheet bf16 dense, NVIDIA H200" or "measured fp32 matmul, CPU".
    source: str


def datasheet_bf16_tflops(device_name: str) -> float | None:
    return next((tflops for key, tflops in DATASHEET_BF16_TFLOPS if key in device_name), None)


_measured: dict[tuple[str, torch.dtype], float] = {}


def device_peak(device: torch.device) -> Peak:
    """The rate MFU divides by on this device (module docstring); a measurement is made once per process."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = datasheet_bf16_tflops(name)
        if tflops is not None:
            return Peak(tflops * 1e12, f"datasheet bf16 dense, {name}")
        return Peak(measured_matmul_flops(device, torch.bfloat16), f"measured bf16 matmul, {name}")
    threads = torch.get_num_threads()
    return Peak(
        measured_matmul_flops(device, torch.float32),
        f"measured fp32 matmul, CPU, {threads} thread{'s' if threads > 1 else ''}",
    )


def measured_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul large enough to reach the device's sustained rate (8192 on a GPU, ~2 s)."""
    key = (str(device), dtype)
    if key not in _measured:
        size, reps = (8192, 50) if device.type == "cuda" else (1024, 10)
        # Its own generator: measuring must not move the training's random streams.
        generator = torch.Generator(device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        a @ b  # first call: allocation, library initialisation
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        _measured[key] = 2 * size**3 * reps / (time.perf_counter() - start)
    return _measured[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
