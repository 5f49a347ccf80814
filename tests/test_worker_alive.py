"""The worker container's liveness check (deploy/image/worker_alive.py) against a real worker: alive while it
runs (registry heartbeat, broker connection), not alive once it has shut down."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack

CHECK = Path(__file__).resolve().parents[1] / "deploy" / "image" / "worker_alive.py"


@pytest.fixture
def stack(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    with scratch_database(pg_url, "vitq_alive") as database_url:
        settings = Settings(
            home=tmp_path,
            database_url=database_url,
            broker_url=redis_url,
            queue=f"vitq-alive-{uuid.uuid4().hex[:10]}",
            heartbeat_seconds=1,
        )
        with running_stack(settings) as running:
            yield running


def check(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK)], env=stack.env(), capture_output=True, text=True, timeout=60, check=False
    )


def test_alive_while_the_worker_runs_and_not_after(stack: Stack) -> None:
    before = check(stack)
    assert before.returncode == 1 and "no live worker" in before.stdout, before
    worker = stack.start_worker()
    log = stack.settings.home / "worker-0.log"
    deadline = time.monotonic() + 90
    while (alive := check(stack)).returncode != 0:
        assert time.monotonic() < deadline, f"never alive: {alive}\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    worker.terminate()
    worker.wait(60)
    after = check(stack)
    assert after.returncode == 1 and "no live worker" in after.stdout, after
