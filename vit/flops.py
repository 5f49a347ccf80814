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
measured matmul rate (bf16 on a GPU, fp32 on the CPU, as the CPU jobs run): the fastest of several timed matmuls,
since one timing under load from other processes reads low (0.040-0.096 TFLOP/s on one CPU in one hour). A worker
calibrates once at its start (`python -m vit.flops`, worker/peak.py), keeps the best rate its host has shown in the
registry and hands it to its trainers in VITQ_PEAK_FLOPS; a trainer without one measures for itself. Should
training itself run faster than the peak (the calibration ran under load), the peak is raised to that rate: a
measured MFU never passes 100 %.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from enum import IntEnum

import torch

from vit.model import ViTConfig
from vit.peak_rates import PEAK_FLOPS_ENV, PEAK_SOURCE_ENV, datasheet_bf16_tflops


def forward_flops(cfg: ViTConfig) -> int:
    """Model FLOPs of one image's forward pass (2 per multiply-add; see the module docstring for what counts)."""
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    linear = 2 * n * (3 * d * d + d * d + 2 * d * m)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * n * n * d  # QK^T and AV, all heads together
    patch_embed = 2 * (n - 1) * cfg.in_chans * cfg.patch_size**2 * d
    return cfg.depth * (linear + attention) + patch_embed + 2 * d * cfg.num_classes


def training_flops_per_image(cfg: ViTConfig) -> int:
    return 3 * forward_flops(cfg)


TIMINGS = 12  # matmuls timed one by one; the fastest gives the rate


class PeakKind(IntEnum):
    """How the peak was found; logged as the float metric `peak_kind` so the dashboard can say it."""

    DATASHEET = 0
    WORKER_CALIBRATION = 1  # the worker's calibration at its start, best its host has shown (the registry)
    TRAINER_MEASURED = 2  # measured by the trainer itself (run outside a worker)
    TRAINING_REACHED = 3  # training ran faster than the measured peak: raised to that rate


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    # How the rate was found, for the log: "datasheet bf16 dense, NVIDIA H200" or "measured fp32 matmul, CPU".
    source: str
    kind: PeakKind = PeakKind.TRAINER_MEASURED

    def at_least(self, achieved_flops_per_s: float) -> Peak:
        """This peak, or the rate training reached when that is higher (a measured peak read low under load)."""
        if achieved_flops_per_s <= self.flops_per_s or self.kind == PeakKind.DATASHEET:
            return self
        source = f"{self.source}; raised to the rate training reached"
        return replace(self, flops_per_s=achieved_flops_per_s, source=source, kind=PeakKind.TRAINING_REACHED)


_measured: dict[tuple[str, torch.dtype], float] = {}


def device_peak(device: torch.device) -> Peak:
    """The rate MFU divides by on this device (module docstring): the datasheet, the worker's calibration, or a
    measurement made once per process."""
    datasheet = _datasheet_peak(device)
    if datasheet is not None:
        return datasheet
    calibrated = os.environ.get(PEAK_FLOPS_ENV)
    if calibrated:
        source = os.environ.get(PEAK_SOURCE_ENV) or "worker calibration"
        return Peak(float(calibrated), source, PeakKind.WORKER_CALIBRATION)
    return measured_peak(device)


def measured_peak(device: torch.device) -> Peak:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        rate = measured_matmul_flops(device, torch.bfloat16)
        return Peak(rate, f"measured bf16 matmul, {name}, fastest of {TIMINGS}")
    threads = torch.get_num_threads()
    return Peak(
        measured_matmul_flops(device, torch.float32),
        f"measured fp32 matmul, CPU, {threads} thread{'s' if threads > 1 else ''}, fastest of {TIMINGS}",
    )


def _datasheet_peak(device: torch.device) -> Peak | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tflops = datasheet_bf16_tflops(name)
    return (
        None if tflops is None else Peak(tflops * 1e12, f"datasheet bf16 dense, {name}", PeakKind.DATASHEET)
    )


def measured_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the fastest of TIMINGS square matmuls, each large enough to reach the device's sustained rate
    (8192 on a GPU); the fastest, because load from other processes only ever slows a timing down."""
    key = (str(device), dtype)
    if key not in _measured:
        size, reps = (8192, 5) if device.type == "cuda" else (1024, 1)
        # Its own generator: measuring must not move the training's random streams.
        generator = torch.Generator(device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        a @ b  # first call: allocation, library initialisation
        _sync(device)
        fastest = float("inf")
        for _ in range(TIMINGS):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            fastest = min(fastest, time.perf_counter() - start)
        _measured[key] = 2 * size**3 * reps / fastest
    return _measured[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    """`python -m vit.flops [--device cuda]`: print this machine's peak as JSON {"flops_per_s", "source", "kind"}
    (the worker's calibration: run in a process of its own, as its trainers run, so the worker never touches
    CUDA)."""
    parser = argparse.ArgumentParser(prog="python -m vit.flops", description=main.__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    device = torch.device(parser.parse_args(argv).device)
    peak = _datasheet_peak(device) or measured_peak(device)
    print(json.dumps({"flops_per_s": peak.flops_per_s, "source": peak.source, "kind": int(peak.kind)}))


if __name__ == "__main__":
    main()
