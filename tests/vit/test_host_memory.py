"""vit.host_memory: with the settings, a step's freed blocks stay in the process (the next step reuses them
without page faults); without them glibc maps such blocks separately and hands them back on free. The effect on
a job's speed is measured by the bench (README, "A real job's speed")."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A fresh interpreter per case (the settings are process-wide): allocate four 16 MiB blocks, as a step's
# activations, free them, and report (bytes they mapped apart from the heap, heap bytes kept after the free).
STEP = textwrap.dedent(
    """
    import ctypes, sys
    from vit.host_memory import keep_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    mapped_before = libc.mallinfo2().hblkhd  # the interpreter's own start-up blocks
    blocks = [libc.malloc(16 * 2**20) for _ in range(4)]
    mapped = libc.mallinfo2().hblkhd - mapped_before
    for block in blocks:
        libc.free(block)
    print(mapped, libc.mallinfo2().arena)
    """
)
MIB = 2**20


def step_memory(mode: str) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True, timeout=60
    )
    mapped, kept = done.stdout.split()
    return int(mapped), int(kept)


def test_freed_step_memory_stays_in_the_process() -> None:
    mapped, kept = step_memory("keep")
    assert mapped == 0  # all four blocks came from the heap
    assert kept >= 64 * MIB  # and the heap kept them after they were freed


def test_without_the_settings_glibc_hands_the_blocks_back() -> None:
    mapped, kept = step_memory("default")
    assert mapped >= 64 * MIB  # each block mapped on its own
    assert kept < 16 * MIB  # and unmapped on free: the next step faults its pages in again
