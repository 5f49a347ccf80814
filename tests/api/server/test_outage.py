"""The API while its database or broker is down or hung: 503 with a JSON body and Retry-After (never a 500 in
text/plain, never a hang), /healthz naming the part that is down, and recovery without a restart.

The API runs under uvicorn (real HTTP) against a PostgreSQL and a Redis of this module's own (tests/services.py),
which the tests stop, restart and freeze; the machine's shared servers are never touched."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.core.migrate import upgrade
from api.core.settings import Settings
from api.server.app import create_app
from api.server.unavailable import RESPONSE_DEADLINE_S, RETRY_AFTER_S
from tests.api.conftest import TINY_SPEC
from tests.services import PrivatePostgres, PrivateRedis, private_postgres, private_redis

# What a client may wait for an answer while the database hangs: the deadline, plus slack for a loaded machine.
HUNG_ANSWER_S = RESPONSE_DEADLINE_S + 3.0
RECOVERY_S = 15.0


@dataclass
class Outage:
    http: httpx.Client
    postgres: PrivatePostgres
    redis: PrivateRedis

    def submit(self) -> int:
        response = self.http.post("/jobs", json=TINY_SPEC)
        assert response.status_code == 201, response.text
        job_id: int = response.json()["id"]
        return job_id

    def job_routes(self, job_id: int) -> list[Callable[[], httpx.Response]]:
        """One request per route that reads or writes the database."""
        return [
            lambda: self.http.get("/jobs"),
            lambda: self.http.get(f"/jobs/{job_id}"),
            lambda: self.http.get(f"/jobs/{job_id}/metrics"),
            lambda: self.http.get(f"/jobs/{job_id}/checkpoints"),
            lambda: self.http.get(f"/jobs/{job_id}/checkpoints/step-1"),
            lambda: self.http.get(f"/jobs/{job_id}/logs"),
            lambda: self.http.post(f"/jobs/{job_id}/cancel"),
            lambda: self.http.post("/jobs", json=TINY_SPEC),
        ]


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    home: Path = tmp_path_factory.mktemp("outage")
    with private_postgres() as postgres, private_redis() as redis:
        upgrade(postgres.url)
        settings = Settings(home=home, database_url=postgres.url, broker_url=redis.url, queue="outage")
        settings.resolved_data_dir.mkdir()
        settings.resolved_storage.mkdir()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            # The client's own timeout is far above the API's deadline: a hang fails the test, not the client.
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                yield Outage(http=http, postgres=postgres, redis=redis)
        finally:
            postgres.thaw()
            server.should_exit = True
            thread.join(30)


PARTS_OK = {"database": "ok", "broker": "ok"}


def parts(health: dict[str, object]) -> dict[str, object]:
    """The database and broker checks (no worker runs here, so `workers` may be down while jobs wait)."""
    return {part: health[part] for part in PARTS_OK}


def assert_parts_recover(outage: Outage) -> None:
    """/healthz reports the database and the broker ok again within RECOVERY_S (checks still hung on the old
    connections finish first)."""
    deadline = time.monotonic() + RECOVERY_S
    while (health := parts(outage.http.get("/healthz").json())) != PARTS_OK and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health == PARTS_OK


def assert_unavailable(response: httpx.Response, detail_prefix: str) -> None:
    request = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == 503, f"{request}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/json", request
    assert response.headers["retry-after"] == str(RETRY_AFTER_S), request
    assert response.json()["detail"].startswith(detail_prefix), f"{request}: {response.json()}"


def eventually_ok(request: Callable[[], httpx.Response], status: int = 200) -> httpx.Response:
    """Retry until the API answers `status` again: it must recover by itself, within RECOVERY_S."""
    deadline = time.monotonic() + RECOVERY_S
    while True:
        response = request()
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.2)


def test_database_down_is_503_json_on_every_route_then_recovers(outage: Outage) -> None:
    job_id = outage.submit()
    outage.postgres.stop()
    try:
        for request in outage.job_routes(job_id):
            started = time.monotonic()
            assert_unavailable(request(), "database unavailable: ")
            assert time.monotonic() - started < HUNG_ANSWER_S
        health = outage.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"].startswith("down:")
        assert health.json()["broker"] == "ok"
    finally:
        outage.postgres.start()
    # The same app, not restarted: the pool drops its dead connections and dials new ones.
    listed = eventually_ok(lambda: outage.http.get("/jobs"))
    assert job_id in [job["id"] for job in listed.json()["items"]]
    assert outage.http.get(f"/jobs/{job_id}").json()["status"] == "queued"
    eventually_ok(lambda: outage.http.post("/jobs", json=TINY_SPEC), status=201)
    assert_parts_recover(outage)


def test_frozen_database_is_503_within_the_deadline_then_recovers(outage: Outage) -> None:
    job_id = outage.submit()
    time.sleep(1.5)  # the pooled connections go idle: the next checkout pings them, and the ping hangs
    with outage.postgres.frozen():
        for request in (
            lambda: outage.http.get(f"/jobs/{job_id}"),
            lambda: outage.http.get("/jobs"),
            lambda: outage.http.post("/jobs", json=TINY_SPEC),
        ):
            started = time.monotonic()
            response = request()
            assert time.monotonic() - started < HUNG_ANSWER_S
            # Either no response in time, or (the pool's few connections all hung) no connection in time.
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == str(RETRY_AFTER_S)
            assert response.json()["detail"].startswith(("service unavailable: ", "database unavailable: "))
        started = time.monotonic()
        health = outage.http.get("/healthz")
        assert time.monotonic() - started < RESPONSE_DEADLINE_S
        assert health.status_code == 503
        assert health.json()["database"].startswith("down:")
        assert health.json()["broker"] == "ok"
    assert eventually_ok(lambda: outage.http.get(f"/jobs/{job_id}")).json()["id"] == job_id
    assert_parts_recover(outage)


def test_broker_down_still_stores_the_job(outage: Outage) -> None:
    """The job is committed before it is enqueued: a failed enqueue leaves it queued (the reaper sends it
    again later), so the client still gets its 201."""
    outage.redis.stop()
    try:
        job_id = outage.submit()
        assert outage.http.get(f"/jobs/{job_id}").json()["status"] == "queued"
        health = outage.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"] == "ok"
        assert health.json()["broker"].startswith("down:")
    finally:
        outage.redis.start()
    assert_parts_recover(outage)
