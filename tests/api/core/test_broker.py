"""The broker client against real brokers: Redis, and the embedded SQLite transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.core.broker import JobQueue
from api.core.settings import Settings


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_purge_drops_only_that_pools_wake_ups(
    broker: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if broker == "redis":
        url, queue = request.getfixturevalue("redis_url"), request.getfixturevalue("unique_queue")
    else:
        url, queue = f"sqla+sqlite:///{tmp_path / 'broker.db'}", "training"
    jobs = JobQueue(Settings(home=tmp_path, broker_url=url, queue=queue))
    try:
        assert jobs.enqueue(1, "hpc") and jobs.enqueue(2, "hpc") and jobs.enqueue(3, "default")
        assert jobs.purge("hpc") == 2
        assert jobs.purge("hpc") == 0
        assert jobs.purge("default") == 1  # the other pool's message was still there
    finally:
        jobs.close()
