"""The peak rates MFU is measured against that need no torch (the worker reads them without loading it):
datasheet rates, and the environment in which a worker hands its calibration to its trainers (vit/flops.py)."""

from __future__ import annotations

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

# The worker's calibration, handed to its trainers (worker/peak.py sets them; the trainer reads them).
PEAK_FLOPS_ENV = "VITQ_PEAK_FLOPS"
PEAK_SOURCE_ENV = "VITQ_PEAK_SOURCE"


def datasheet_bf16_tflops(device_name: str) -> float | None:
    return next((tflops for key, tflops in DATASHEET_BF16_TFLOPS if key in device_name), None)
