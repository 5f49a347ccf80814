"""An API per test on a migrated database with a real broker: PostgreSQL + Redis, and SQLite + the embedded
sqla+sqlite broker. Messages the API sends are read back from the broker with kombu."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from api.core.db import make_engine, scratch_database
from api.core.migrate import upgrade
from api.core.models import Job, Sweep, Transfer, Webhook, Worker
from api.core.settings import Settings
from api.server.app import create_app
from tests.conftest import PG_ADMIN_URL

TINY_SPEC: dict[str, Any] = {
    "kind": "pretrain",
    "name": "tiny",
    "model": {"variant": "Ti/4", "image_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "train": {"steps": 40, "batch_size": 32},
}


@pytest.fixture(scope="session")
def api_pg_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database of the API tests' own (the run's shared one is set up with create_all by other
    tests), migrated once; each test empties it afterwards."""
    with scratch_database(pg_url, "vitq_api") as url:
        upgrade(url)
        yield url


@dataclass
class Api:
    client: TestClient
    settings: Settings
    engine: Engine

    def session(self) -> Session:
        return Session(self.engine)

    def sent_job_ids(self) -> list[int]:
        """Consume every message on the job queue; the job ids the tasks were sent for. (The API has sent them
        before answering, so nothing more can arrive: no need to wait.)"""
        ids: list[int] = []
        with Connection(self.settings.resolved_broker_url) as connection:
            queue = connection.SimpleQueue(self.settings.queue)
            try:
                while True:
                    try:
                        message = queue.get_nowait()
                    except Empty:
                        return ids
                    assert message.headers["task"] == "vitq.run_job"
                    args, _kwargs, _embed = message.decode()
                    ids.append(args[0])
                    message.ack()
            finally:
                queue.close()

    def stored_job_count(self) -> int:
        with self.session() as session:
            return session.query(Job).count()


@pytest.fixture(params=["postgresql", "sqlite"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    if request.param == "postgresql":
        database_url = request.getfixturevalue("api_pg_url")
        broker_url = request.getfixturevalue("redis_url")
        queue = request.getfixturevalue("unique_queue")
    else:
        database_url = f"sqlite:///{tmp_path / 'vitq.db'}"
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        queue = "training"
        upgrade(database_url)
    settings = Settings(home=tmp_path, database_url=database_url, broker_url=broker_url, queue=queue)
    settings.resolved_data_dir.mkdir()
    settings.resolved_storage.mkdir()
    engine = make_engine(database_url)
    try:
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            yield Api(client=client, settings=settings, engine=engine)
    finally:
        with Session(engine) as session:
            session.execute(delete(Webhook))
            session.execute(delete(Job))  # cascades to metric points and checkpoints
            session.execute(delete(Sweep))
            session.execute(delete(Transfer))
            session.execute(delete(Worker))
            session.commit()
        engine.dispose()


def submit(api: Api, spec: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    response = api.client.post("/jobs", json={**(spec or TINY_SPEC), **changes})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of its own per test (a claim takes the first runnable job: no other test's
    jobs may be there), without an app around it."""
    if request.param == "postgresql":
        with scratch_database(PG_ADMIN_URL, "vitq_engine") as url:
            upgrade(url)
            engine = make_engine(url)
            yield engine
            engine.dispose()
        return
    url = f"sqlite:///{tmp_path / 'vitq.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` under uvicorn on a free port, in a thread; its URL."""
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
