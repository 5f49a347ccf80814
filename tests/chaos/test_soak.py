"""Soak: as many reaper passes as a default worker makes in 30 minutes, squeezed into a short interval, with a
job always waiting behind a busy worker so that every pass asks the broker how many messages wait. The worker
must stay alive and its connections must stay flat (its open file descriptors; on PostgreSQL also the server's
count): the embedded default's worker once died after 14 minutes, its broker connection pool drained by those
questions (`QueuePool limit of size 5 overflow 10 reached`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack, tiny_spec
from worker.reaper import reap_interval

from .harness import chaos_stack

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]

PASSES = int(30 * 60 / reap_interval(Settings(lease_seconds=60, reap_seconds=None)))  # 360 at 5 s
FAST_INTERVAL_S = 0.05  # VITQ_REAP_SECONDS for the soak (a worker without the setting passes once a second)
# Short, so that a reaper that only looks at jobs queued for a lease soon looks at the waiting one; long enough
# that a heartbeat every second renews it well within the 30 % after which the supervisor stops the trainer.
LEASE_S = 6.0
PASS_WORK_S = 0.1  # a pass's queries on a crowded CPU, on top of the interval it sleeps
SLACK = 3  # descriptors or connections that may come and go between two samples


@pytest.fixture(autouse=True)
def fast_reaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITQ_REAP_SECONDS", str(FAST_INTERVAL_S))  # workers inherit the test's environment


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(stack: Stack, *, done: Callable[[], bool], server_connections: Callable[[], int] | None) -> None:
    """Keep the worker busy and a job waiting until `done()`; sample the worker's descriptors (and the server's
    connections) all along; then the waiting job must still run."""
    [worker] = stack.workers
    busy = stack.post(tiny_spec(steps=1_000_000, checkpoint_every=0))["id"]
    waiting = stack.post(tiny_spec(steps=20))["id"]
    stack.wait_status(busy, "running", timeout=120)
    time.sleep(5)  # pools grow to their working size
    descriptors = [open_descriptors(worker.pid)]
    connections = [server_connections()] if server_connections else []
    started = time.monotonic()
    while not done():
        assert worker.poll() is None, (
            f"the worker died ({worker.returncode}) after {time.monotonic() - started:.0f} s"
        )
        time.sleep(1)
        descriptors.append(open_descriptors(worker.pid))
        if server_connections:
            connections.append(server_connections())
    assert max(descriptors) <= descriptors[0] + SLACK, f"the worker's open descriptors grew: {descriptors}"
    if connections:
        assert max(connections) <= connections[0] + SLACK, f"PostgreSQL connections grew: {connections}"
    assert stack.job(waiting)["status"] == "queued"
    assert stack.client.post(f"/jobs/{busy}/cancel").status_code == 202
    stack.wait_status(waiting, "succeeded", timeout=120)


def test_embedded_default_worker_lives_through_30_minutes_of_reaper_passes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, lease_seconds=LEASE_S, heartbeat_seconds=1, auth="off")
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    # Time is the only measure of passes here (SQLite keeps no statement counts): the intervals, plus the time a
    # pass's own queries take.
    duration = PASSES * (reap_interval(settings) + PASS_WORK_S)
    with running_stack(settings) as stack:
        stack.start_worker()
        deadline = time.monotonic() + duration + 5  # plus soak()'s warm-up
        soak(stack, done=lambda: time.monotonic() > deadline, server_connections=None)


def test_postgres_and_redis_worker_lives_through_30_minutes_of_reaper_passes(tmp_path: Path) -> None:
    with (
        chaos_stack(tmp_path, workers=1, lease_seconds=LEASE_S) as chaos,
        counters(chaos.pg.url, chaos.broker.url) as (
            connections,
            broker_checks,
        ),
    ):
        # Each pass asks Redis for the queue's length: four LLENs, one per priority list kombu keeps.
        start = broker_checks()
        soak(chaos.stack, done=lambda: broker_checks() - start >= PASSES, server_connections=connections)


@contextmanager
def counters(database_url: str, broker_url: str) -> Iterator[tuple[Callable[[], int], Callable[[], int]]]:
    """(the PostgreSQL server's client connections, besides this one; how many times Redis answered LLEN / 4)."""
    engine = create_engine(database_url, pool_size=1)
    client = redis.Redis.from_url(broker_url)

    def connections() -> int:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'vitq' AND pid <> pg_backend_pid()"
            return int(connection.execute(text(query)).scalar_one())

    def broker_checks() -> int:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_llen", {}).get("calls", 0)) // 4

    try:
        yield connections, broker_checks
    finally:
        client.close()
        engine.dispose()
