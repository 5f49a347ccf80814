"""What a job and its worker use: CPU and resident memory of the trainer's process tree (psutil), the host's
CPU and memory, and each GPU's utilisation and memory (NVML through nvidia-ml-py, opened only when the package
and a driver are there).

NVML reads the devices without creating a CUDA context, so the worker process still never initialises CUDA
(worker/devices.py). A job's devices are its own while it runs (DeviceSlots), so a device's figures are the
job's. CPU figures are psutil's: a process's percent is of one core (a trainer busy on 4 cores reads 400), the
host's is of all its cores (0-100).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from vit.rundir import MetricPoint

SYS_PREFIX = "sys/"  # the job's system series, stored beside the trainer's metrics


@dataclass(frozen=True)
class GpuReading:
    index: int  # the device's index on its host (nvidia-smi's, as VITQ_DEVICES and jobs.devices name it)
    util_percent: float  # of the last sample period NVML keeps (1/6 s to 1 s, by device)
    mem_used_bytes: int
    mem_total_bytes: int


@dataclass(frozen=True)
class TreeUsage:
    cpu_percent: float | None  # None on the first sample: psutil measures CPU between two samples
    rss_bytes: int  # summed over the processes (pages they share count once per process: an upper bound)
    processes: int


class Nvml:
    """NVML, initialised once; reads nothing where the package or the driver is missing (a CPU machine)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # ImportError, or NVMLError: no driver, no device
            return
        self._nvml = pynvml

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def read(self, indices: Sequence[int]) -> list[GpuReading]:
        """The devices of `indices` that answer; a device that fails (fallen off the bus) is left out."""
        nvml = self._nvml
        if nvml is None:
            return []
        readings = []
        for index in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue
            readings.append(GpuReading(index, float(util.gpu), int(memory.used), int(memory.total)))
        return readings


@functools.cache
def shared_nvml() -> Nvml:
    """One NVML handle per worker process, for its jobs and its registry figures alike."""
    return Nvml()


class ProcessTree:
    """CPU and resident memory of a process and everything below it (torchrun, its ranks, their data loader
    workers). The processes are remembered between samples: psutil measures a process's CPU from its previous
    sample, so a process first seen contributes its memory now and its CPU from the next sample on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._known: dict[int, psutil.Process] = {}

    def sample(self) -> TreeUsage | None:
        """None once the root process is gone: exited, or a zombie not yet reaped (its memory reads 0)."""
        try:
            root = psutil.Process(self.pid)
            if root.status() == psutil.STATUS_ZOMBIE:
                return None
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu: float | None = None
        rss = counted = 0
        known: dict[int, psutil.Process] = {}
        for process in found:
            previous = self._known.get(process.pid)
            same = previous is not None and previous == process  # equal: same pid and creation time
            tracked = previous if same and previous is not None else process
            try:
                percent = tracked.cpu_percent(interval=None)  # a new process: primes it, answers 0.0
                rss += tracked.memory_info().rss
            except psutil.Error:  # it exited while we looked
                continue
            if same:
                cpu = (cpu or 0.0) + percent
            known[process.pid] = tracked
            counted += 1
        self._known = known
        if rss == 0:  # every process exited while we looked: no figure, rather than a false 0
            return None
        return TreeUsage(cpu_percent=cpu, rss_bytes=rss, processes=counted)


def job_points(
    usage: TreeUsage | None, gpus: Sequence[GpuReading], *, step: int, at: float
) -> list[MetricPoint]:
    """A sample as the job's system series: sys/cpu_percent, sys/rss_bytes, and sys/gpu{n}_util and
    sys/gpu{n}_mem_bytes for the job's n-th device (the trainer's cuda:n), in the order `gpus` lists them."""
    points = []
    if usage is not None:
        if usage.cpu_percent is not None:
            points.append(MetricPoint(f"{SYS_PREFIX}cpu_percent", step, usage.cpu_percent, at))
        points.append(MetricPoint(f"{SYS_PREFIX}rss_bytes", step, float(usage.rss_bytes), at))
    for n, gpu in enumerate(gpus):
        points.append(MetricPoint(f"{SYS_PREFIX}gpu{n}_util", step, gpu.util_percent, at))
        points.append(MetricPoint(f"{SYS_PREFIX}gpu{n}_mem_bytes", step, float(gpu.mem_used_bytes), at))
    return points


class HostUsage:
    """The host's figures for the worker registry: CPU (since the previous sample, all cores), memory in use
    (total minus available) and each of the worker's GPUs."""

    def __init__(self, gpu_indices: Sequence[int]) -> None:
        self.gpu_indices = list(gpu_indices)
        with contextlib.suppress(Exception):
            psutil.cpu_percent(
                interval=None
            )  # primes the host's counter: the first sample measures from here

    def sample(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        gpus = shared_nvml().read(self.gpu_indices) if self.gpu_indices else []
        return host_figures(
            psutil.cpu_percent(interval=None), memory.total - memory.available, memory.total, gpus
        )


def host_figures(
    cpu_percent: float, mem_used_bytes: int, mem_total_bytes: int, gpus: Sequence[GpuReading]
) -> dict[str, Any]:
    """The registry's JSON (api/core/schemas.HostUsageOut's shape)."""
    return {
        "cpu_percent": cpu_percent,
        "mem_used_bytes": mem_used_bytes,
        "mem_total_bytes": mem_total_bytes,
        "gpus": [
            {
                "index": g.index,
                "util_percent": g.util_percent,
                "mem_used_bytes": g.mem_used_bytes,
                "mem_total_bytes": g.mem_total_bytes,
            }
            for g in gpus
        ],
        "sampled_at": time.time(),
    }
