"""`train.precision`: which dtype each part of a training step runs in.

    fp32  everything in float32 (TF32 matmuls on a GPU where PyTorch allows them)
    bf16  autocast: matmuls and attention in bfloat16; parameters, gradients and optimizer state stay float32
    fp8   bf16 as above, and the Linear layers' matmuls in float8 (torchao's float8 training: dynamic per-tensor
          scales, e4m3 forward, e5m2 gradients); float32 master weights as with bf16

fp8 needs float8 tensor cores (compute capability 9.0: Hopper, and newer) and torchao (`pip install
'vitq[gpu]'`, or the wheels under .whl/ on a machine without an index). torchao is imported only for fp8 jobs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

FP8_MIN_CAPABILITY = (9, 0)
# float8 matmuls want both sides of a Linear to be multiples of 16 (a 10-class head is not: it stays bf16).
FP8_DIVISOR = 16


class UnsupportedPrecision(ValueError):
    """The device (or this installation) cannot run the precision the spec asks for."""


def check_supported(precision: str, device: torch.device) -> None:
    """Raise UnsupportedPrecision, saying why and what would work, when `precision` cannot run on `device`."""
    if precision != "fp8":
        return
    if device.type != "cuda":
        raise UnsupportedPrecision(
            f"train.precision fp8 needs a GPU with float8 matmuls (Hopper or newer); this job runs on {device.type}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise UnsupportedPrecision(
            f"train.precision fp8 needs compute capability 9.0 or newer (Hopper); {name} is "
            f"{capability[0]}.{capability[1]}: use bf16"
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise UnsupportedPrecision(
            "train.precision fp8 needs torchao on the worker: pip install 'vitq[gpu]' (or the wheels in .whl/)"
        ) from None


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision in ("bf16", "fp8"))


def convert_to_fp8(model: nn.Module) -> list[str]:
    """Swap the model's Linear layers whose sides are multiples of 16 for torchao's Float8Linear, in place (same
    parameters, same state-dict keys); returns the names of the layers converted."""
    from torchao.float8 import convert_to_float8_training

    converted: list[str] = []

    def eligible(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        fits = module.in_features % FP8_DIVISOR == 0 and module.out_features % FP8_DIVISOR == 0
        if fits:
            converted.append(name)
        return fits

    convert_to_float8_training(model, module_filter_fn=eligible)
    return converted
