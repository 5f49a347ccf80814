"""vit.host_memory: the allocator settings take on this Linux/glibc machine (vit.train and bench/job_throughput.py
apply them at start; the effect is measured by the bench: README, "A real job's speed")."""

from __future__ import annotations

import platform

import pytest

from vit.host_memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_settings_take_on_glibc() -> None:
    assert keep_freed_memory()
