"""Submits run a few at a time in a thread pool of their own (api/server/threads.py): with one writer, a submit held
up in the database keeps a second one waiting for its turn, and pages are answered meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from api.core.state_machine import LOCAL_OWNER, OWNER_LOCKS
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC, Api, submit


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def _waiting_for_the_owner_lock(api: Api) -> int:
    with api.engine.connect() as connection:
        return (
            connection.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            )
            or 0
        )


def test_a_held_up_submit_keeps_the_next_waiting_and_pages_answer(api: Api) -> None:
    if api.engine.dialect.name != "postgresql":
        pytest.skip("holds a submit up on PostgreSQL's owner lock (SQLite takes none)")
    shown = submit(api)
    settings = api.settings.model_copy(update={"api_writers": 1, "max_queued_jobs": 100})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        writers = client.app.state.writers  # type: ignore[attr-defined]
        answers: list[int] = []

        def post() -> None:
            answers.append(client.post("/jobs", json=TINY_SPEC).status_code)

        with api.engine.connect() as holder:
            # The quota check takes the owner's lock: holding it holds the first submit inside its transaction.
            holder.execute(select(func.pg_advisory_lock(OWNER_LOCKS, func.hashtext(LOCAL_OWNER))))
            first = threading.Thread(target=post)
            first.start()
            _until(lambda: _waiting_for_the_owner_lock(api) == 1)
            second = threading.Thread(target=post)
            second.start()
            _until(lambda: writers.statistics().tasks_waiting == 1)
            assert writers.borrowed_tokens == 1 and _waiting_for_the_owner_lock(api) == 1
            assert client.get(f"/jobs/{shown['id']}").status_code == 200  # a read does not queue behind them
            assert answers == []
            holder.execute(select(func.pg_advisory_unlock(OWNER_LOCKS, func.hashtext(LOCAL_OWNER))))
        first.join(30)
        second.join(30)
    assert answers == [201, 201]
