"""Idempotent POST /jobs against a real uvicorn server on PostgreSQL (no worker): 1,000 concurrent POSTs with 200
distinct keys make exactly 200 jobs, and a client whose first answer never arrives (it times out) retries with
the same key and still makes one job."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.client import VitqClient
from api.core import tokens
from api.core.db import make_engine
from api.core.models import ApiToken, Job
from api.core.settings import Settings
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC, serving

KEYS, COPIES, CLIENTS = 200, 5, 16


@pytest.fixture
def server(
    request: pytest.FixtureRequest, api_pg_url: str, redis_url: str, unique_queue: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """The API with authentication on (and the settings a test passes as the fixture's param), under uvicorn on
    a free port; its URL and a token."""
    settings = Settings(
        home=tmp_path,
        database_url=api_pg_url,
        broker_url=redis_url,
        queue=unique_queue,
        auth="required",
        **getattr(request, "param", {}),
    )
    settings.resolved_data_dir.mkdir()
    settings.resolved_storage.mkdir()
    engine = make_engine(api_pg_url)
    with Session(engine) as session:
        _row, token = tokens.create(session=session, owner="alice")
    try:
        with serving(create_app(settings)) as url:
            yield url, token
    finally:
        with Session(engine) as session:
            session.execute(delete(Job))
            session.execute(delete(ApiToken))
            session.commit()
        engine.dispose()


def _jobs_made(server_url: str, token: str) -> int:
    listed = httpx.get(f"{server_url}/jobs?limit=1", headers={"authorization": f"Bearer {token}"})
    total: int = listed.json()["total"]
    return total


def test_a_thousand_concurrent_posts_with_200_keys_make_200_jobs(
    server: tuple[str, str], api_pg_url: str
) -> None:
    url, token = server
    keys = [str(uuid.uuid4()) for _ in range(KEYS)]
    # Each key's copies side by side in the work list: the threads pick them up at the same moment.
    work = [key for key in keys for _ in range(COPIES)]
    local = threading.local()

    def post(key: str) -> tuple[str, int, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60
            )
        spec = {**TINY_SPEC, "name": f"k-{key[:8]}"}
        response = local.client.post("/jobs", json=spec, headers={"idempotency-key": key})
        return key, response.status_code, response.json().get("id", -1)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(post, work))
    elapsed = time.perf_counter() - started
    statuses = [status for _, status, _ in results]
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    assert statuses.count(201) == KEYS
    ids: defaultdict[str, set[int]] = defaultdict(set)
    for key, _status, job_id in results:
        ids[key].add(job_id)
    assert all(len(made) == 1 for made in ids.values())  # every copy answered with its key's one job
    assert len({job_id for made in ids.values() for job_id in made}) == KEYS
    engine = make_engine(api_pg_url)
    try:
        with Session(engine) as session:
            stored = session.scalar(
                select(func.count()).select_from(Job).where(Job.idempotency_key.in_(keys))
            )
    finally:
        engine.dispose()
    assert stored == KEYS
    print(f"{len(work)} POSTs with {KEYS} keys from {CLIENTS} threads: {elapsed:.1f} s")


class LoseFirstAnswer:
    """A TCP proxy in front of the server that forwards every request but swallows the first answer, holding
    the connection open until the client has given up (its timeout), as a lost network reply would."""

    def __init__(self, target: tuple[str, int], hold_s: float) -> None:
        self.target, self.hold_s, self.connections = target, hold_s, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.target)
            swallow = self.connections == 1
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, swallow), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, swallow: bool) -> None:
        try:
            while data := source.recv(65536):
                if swallow:
                    time.sleep(self.hold_s)  # the answer arrived at the proxy; the client never sees it
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_client_that_times_out_and_retries_makes_one_job(server: tuple[str, str]) -> None:
    url, token = server
    host, port = url.removeprefix("http://").split(":")
    proxy = LoseFirstAnswer((host, int(port)), hold_s=2.0)
    try:
        with VitqClient(f"http://127.0.0.1:{proxy.port}", timeout=1.0, token=token) as client:
            job = client.submit({**TINY_SPEC, "name": "retried"})
    finally:
        proxy.close()
    assert proxy.connections >= 2  # the first try timed out; a retry got the answer
    assert job["name"] == "retried"
    assert _jobs_made(url, token) == 1


def test_without_a_key_each_retry_would_be_a_new_job(server: tuple[str, str]) -> None:
    """The control: the same lost answer, retried by hand without a key, makes two jobs."""
    url, token = server
    host, port = url.removeprefix("http://").split(":")
    proxy = LoseFirstAnswer((host, int(port)), hold_s=2.0)
    headers = {"authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", timeout=1.0, headers=headers) as client:
            with pytest.raises(httpx.TimeoutException):
                client.post("/jobs", json=TINY_SPEC)
            assert client.post("/jobs", json=TINY_SPEC).status_code == 201
    finally:
        proxy.close()
    assert _jobs_made(url, token) == 2


def test_each_client_submit_sends_a_new_uuid4_key(server: tuple[str, str], api_pg_url: str) -> None:
    """Two submits of one spec are two jobs (a new key each; only a submit's own retries reuse its key)."""
    url, token = server
    with VitqClient(url, token=token) as client:
        first, second = client.submit(TINY_SPEC), client.submit(TINY_SPEC)
    assert first["id"] != second["id"]
    engine = make_engine(api_pg_url)
    try:
        with Session(engine) as session:
            keys = session.scalars(select(Job.idempotency_key).where(Job.id.in_([first["id"], second["id"]])))
            assert all(key is not None and uuid.UUID(key).version == 4 for key in keys)
    finally:
        engine.dispose()


@pytest.mark.parametrize("server", [{"max_queued_jobs": 5}], indirect=True)
def test_concurrent_submits_never_pass_the_queued_quota(server: tuple[str, str]) -> None:
    """The owner's advisory lock decides: 48 submits at once for 5 slots make exactly 5 jobs."""
    url, token = server
    local = threading.local()

    def post(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=60
            )
        return local.client.post("/jobs", json=TINY_SPEC).status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(post, range(48)))
    assert sorted(set(statuses)) == [201, 429] and statuses.count(201) == 5
    assert _jobs_made(url, token) == 5
