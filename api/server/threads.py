"""Where the hot routes do their blocking work: small thread pools of their own, not Starlette's shared 40.

A submit holds a transaction and a connection from parse to commit; a job page makes three reads. On a small
machine, more of them at once than it has cores only adds lock, GIL and connection contention: at 32 clients,
submits in the shared 40 threads did half the work per second of the same submits queued for 6, and a job page
0.7x of its floor against 1.2x with 6 threads (bench/service.py, 2 cores). Submits and pages have pools of their
own, so a burst of submits never holds up the pages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

Result = TypeVar("Result")


def pool(threads: int) -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(threads)


async def run_write(request: Request, function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` in a worker thread, at most `api_writers` at once (app.state.writers)."""
    return await _run(request.app.state.writers, function, *args)


async def run_read(request: Request, function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` in a worker thread, at most `api_readers` at once (app.state.readers)."""
    return await _run(request.app.state.readers, function, *args)


async def _run(limiter: anyio.CapacityLimiter, function: Callable[..., Result], *args: Any) -> Result:
    return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=limiter)
