"""Where submits run: a few threads of their own, not the shared pool of 40.

Each submit holds a database transaction and a connection from parse to commit. On a small machine, more
submits at once than it can run only add lock, GIL and connection contention: 32 concurrent submits in 40
threads did half the work per second of the same submits queued for 6 (bench/service.py, 2 cores). Reads keep
the shared pool, so a burst of submits never holds up the pages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

Result = TypeVar("Result")


def writers(concurrency: int) -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(concurrency)


async def run_write(request: Request, function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` in a worker thread, at most `api_writers` at once (app.state.writers)."""
    limiter: anyio.CapacityLimiter = request.app.state.writers
    return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=limiter)
