"""The GPUs of this worker's machine and which of them are free.

Devices are read by `nvidia-smi` in a subprocess: the worker process never initialises CUDA (its trainers own
the devices). `VITQ_DEVICES` overrides what is found: "none" for a CPU worker on a GPU machine, or a list such
as "0,1,2,3" to give a worker some of the machine's devices (one worker per device group) — and, in tests, to
stand for GPUs that are not there.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]


def detect(override: str | None) -> list[dict[str, Any]]:
    """[{"index", "name", "memory_mb"}] for each GPU this worker may use; [] on a CPU machine."""
    if override is not None:
        if override.strip().lower() in ("", "none"):
            return []
        indices = [int(part) for part in override.split(",") if part.strip()]
        found = {d["index"]: d for d in _query()}
        return [found.get(i, {"index": i, "name": "unlisted device", "memory_mb": 0}) for i in indices]
    return _query()


def _query() -> list[dict[str, Any]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(QUERY, capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    devices = []
    for line in output.splitlines():
        index, name, memory = (part.strip() for part in line.split(",", 2))
        devices.append({"index": int(index), "name": name, "memory_mb": int(float(memory))})
    return devices


class DeviceSlots:
    """Which of the worker's devices its running jobs hold. `claiming` serializes the claims of the worker's
    threads: each sees the devices the others just took."""

    def __init__(self, devices: Sequence[int]) -> None:
        self.gpu_worker = bool(devices)
        self._free = list(devices)
        self.claiming = threading.Lock()
        self._lock = threading.Lock()

    def free(self) -> list[int] | None:
        """Free device indices, lowest first; None on a CPU worker (it fits any job of its pool)."""
        with self._lock:
            return sorted(self._free) if self.gpu_worker else None

    def take(self, devices: Sequence[int]) -> None:
        with self._lock:
            for device in devices:
                self._free.remove(device)  # ValueError: a claim handed out a device that was not free

    def give_back(self, devices: Sequence[int]) -> None:
        with self._lock:
            self._free.extend(devices)
