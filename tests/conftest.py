"""Shared fixtures: each test run creates its own PostgreSQL database (dropped at the end) and its own queue
name on Redis, so runs never share state. Override the servers with VITQ_TEST_PG_ADMIN_URL / VITQ_TEST_REDIS_URL.
The CLI and browser modules share one embedded service fixture (tests/api/cli/service.py starts it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.client import VitqClient
from api.core.db import scratch_database
from tests.api.cli.service import Service, running_service

# Tests written before tokens existed drive the API as the local admin: authentication is off unless a test
# asks for it (Settings(auth="required"); tests/api/server/test_tenants.py). Subprocesses (vitq serve) inherit it.
os.environ.setdefault("VITQ_AUTH", "off")
PG_ADMIN_URL = os.environ.get("VITQ_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VITQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files whose tests may run longest (their `timeout` marks) run first. `make test` hands each file whole
    to one test process (--dist loadfile) in this order: the digits file (3600 s allowed, ten minutes on a crowded
    CPU), handed out among the last, ran on alone for minutes after the other processes had finished."""
    longest: dict[Path, float] = {}
    for item in items:
        mark = item.get_closest_marker("timeout")
        allowed = float(mark.args[0]) if mark is not None and mark.args else 0.0
        longest[item.path] = max(longest.get(item.path, 0.0), allowed)
    items.sort(key=lambda item: -longest[item.path])  # stable: files that allow as long keep their order


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test run."""
    with scratch_database(PG_ADMIN_URL, "vitq_test") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vitq.db'}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


@pytest.fixture
def unique_queue(redis_url: str) -> Iterator[str]:
    """A queue name no other test (or test run) uses; its keys are deleted afterwards."""
    queue = f"vitq-test-{uuid.uuid4().hex[:10]}"
    yield queue
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Service]:
    """The real embedded service (`vitq serve`: SQLite, serverless broker, one worker), one per test module."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    with running_service(tmp_path_factory.mktemp(f"vitq-{module}")) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[VitqClient]:
    with VitqClient(service.url) as vitq:
        yield vitq
