"""worker/usage.py: a real process tree's CPU and memory, the job's sys/* series, and the host's figures.

No GPU here: NVML's readings come from a real driver only, so the GPU part is covered by what turns readings
into series and registry JSON (job_points, host_figures) and by NVML reporting nothing on a machine without one.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from api.core.schemas import HostUsageOut
from worker.usage import GpuReading, HostUsage, Nvml, ProcessTree, TreeUsage, host_figures, job_points

# A parent that holds 64 MB and starts a child that spins on a core and holds 32 MB of its own.
TREE = """
import subprocess, sys, time
held = bytearray(64 * 2**20)
child = subprocess.Popen([sys.executable, "-c", "x = bytearray(32 * 2**20)\\nwhile True: pass"])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_tree_is_measured_whole() -> None:
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        tree = ProcessTree(parent.pid)
        first = tree.sample()
        assert first is not None and first.cpu_percent is None  # nothing to measure CPU from yet
        time.sleep(0.5)
        usage = tree.sample()
        assert usage is not None and usage.processes == 2
        assert usage.rss_bytes > 96 * 2**20  # both processes' memory, not the parent's alone
        assert usage.cpu_percent is not None and usage.cpu_percent > 10  # the child's spinning core
    finally:
        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()
    assert tree.sample() is None  # the root is gone


def test_a_trainer_that_exited_but_is_not_yet_reaped_gives_no_figure() -> None:
    # Between the trainer's exit and the supervisor's wait() it is a zombie whose memory reads 0: a sample then
    # must say nothing, not store "0 B" as the job's last memory figure.
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    tree = ProcessTree(exited.pid)
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(exited.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert tree.sample() is None
    finally:
        exited.wait()


def test_a_sample_becomes_the_jobs_system_series() -> None:
    gpus = [
        GpuReading(index=3, util_percent=87.0, mem_used_bytes=5 * 2**30, mem_total_bytes=80 * 2**30),
        GpuReading(index=5, util_percent=12.5, mem_used_bytes=2**30, mem_total_bytes=80 * 2**30),
    ]
    points = job_points(TreeUsage(cpu_percent=250.0, rss_bytes=2**30, processes=4), gpus, step=40, at=1.5)
    assert {(p.name, p.value) for p in points} == {
        ("sys/cpu_percent", 250.0),
        ("sys/rss_bytes", float(2**30)),
        ("sys/gpu0_util", 87.0),  # the job's first device (its cuda:0), whatever its index on the host
        ("sys/gpu0_mem_bytes", float(5 * 2**30)),
        ("sys/gpu1_util", 12.5),
        ("sys/gpu1_mem_bytes", float(2**30)),
    }
    assert {(p.step, p.time) for p in points} == {(40, 1.5)}
    # The first sample has memory but no CPU yet; a trainer already gone has neither.
    assert [p.name for p in job_points(TreeUsage(None, 2**20, 1), [], step=0, at=0.0)] == ["sys/rss_bytes"]
    assert job_points(None, [], step=0, at=0.0) == []


def test_host_figures_fit_the_registry_shape() -> None:
    gpu = GpuReading(index=1, util_percent=50.0, mem_used_bytes=10, mem_total_bytes=100)
    shown = HostUsageOut.model_validate(host_figures(12.5, 3, 8, [gpu]))
    assert (shown.cpu_percent, shown.mem_used_bytes, shown.mem_total_bytes) == (12.5, 3, 8)
    assert [(g.index, g.util_percent, g.mem_used_bytes, g.mem_total_bytes) for g in shown.gpus] == [
        (1, 50.0, 10, 100)
    ]

    measured = HostUsageOut.model_validate(HostUsage([]).sample())  # this machine, measured for real
    assert 0 <= measured.cpu_percent <= 100
    assert 0 < measured.mem_used_bytes < measured.mem_total_bytes == psutil.virtual_memory().total
    assert measured.gpus == []


def test_nvml_reads_nothing_without_a_driver() -> None:
    nvml = Nvml()
    if nvml.available:  # a GPU machine: its device 0 reads as a device
        (reading,) = nvml.read([0])
        assert 0 <= reading.util_percent <= 100 and 0 < reading.mem_used_bytes <= reading.mem_total_bytes
    else:
        assert nvml.read([0, 1]) == []
