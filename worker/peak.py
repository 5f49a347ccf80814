"""The peak rate MFU is measured against, calibrated once per worker (vit/flops.py says why).

At its start the worker times matmuls in a process of its own (`python -m vit.flops`, with a one-process
trainer's environment: the same threads, and the worker never touches CUDA), keeps in the registry the best rate
its host has shown for that device, and hands that rate to every trainer it launches (worker/launch.py). A GPU
with a datasheet rate needs no calibration. The calibration runs in a thread: a job started before it ends
measures for itself, as a trainer run from a shell does.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from vit.peak_rates import PEAK_FLOPS_ENV, PEAK_SOURCE_ENV, datasheet_bf16_tflops

log = logging.getLogger(__name__)
CALIBRATION_TIMEOUT_S = 300

_calibrated: dict[str, str] = {}  # the environment trainers get: VITQ_PEAK_FLOPS / VITQ_PEAK_SOURCE


def needs_calibration(gpus: Sequence[dict[str, Any]]) -> bool:
    return not gpus or any(datasheet_bf16_tflops(g["name"]) is None for g in gpus)


def measure(gpus: Sequence[dict[str, Any]], env: dict[str, str]) -> tuple[float, str]:
    """(FLOP/s, how it was found) from `python -m vit.flops` run with the trainers' environment `env`."""
    command = [sys.executable, "-m", "vit.flops", "--device", "cuda" if gpus else "cpu"]
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=CALIBRATION_TIMEOUT_S, check=True
    ).stdout
    found = json.loads(output.strip().splitlines()[-1])
    return float(found["flops_per_s"]), str(found["source"])


def set_calibrated(flops_per_s: float, source: str) -> None:
    _calibrated.update({PEAK_FLOPS_ENV: repr(flops_per_s), PEAK_SOURCE_ENV: source})


def trainer_env() -> dict[str, str]:
    """What a trainer's environment gets from the calibration: nothing until it is done."""
    return dict(_calibrated)


def calibrate_in_background(
    gpus: Sequence[dict[str, Any]], env: dict[str, str], record: Callable[[float, str], tuple[float, str]]
) -> threading.Thread | None:
    """Measure, `record` in the registry (which answers with the host's best), and hand that to the trainers."""
    if not needs_calibration(gpus):
        return None

    def run() -> None:
        try:
            flops_per_s, source = measure(gpus, env)
            best, best_source = record(flops_per_s, source)
            set_calibrated(best, f"worker calibration: {best_source}, best its host has shown")
            log.info("peak %.3g TFLOP/s (%s)", best / 1e12, best_source)
        except Exception:
            log.warning("peak calibration failed; trainers measure their own", exc_info=True)

    thread = threading.Thread(target=run, name="peak-calibration", daemon=True)
    thread.start()
    return thread
