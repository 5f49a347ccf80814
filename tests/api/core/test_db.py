"""The pool replaces a connection the server dropped while it sat idle, instead of failing the next request; a
runner's transaction left open by a stalled process lets go of its locks."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

import api.core.db
from api.core.db import make_engine
from api.server.unavailable import RESPONSE_DEADLINE_S
from worker.supervisor import IDLE_IN_TRANSACTION_S


def test_an_idle_connection_killed_by_the_server_is_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.core.db, "IDLE_PING_SECONDS", 0.1)
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar_one()
    admin.dispose()
    time.sleep(0.2)
    with engine.connect() as conn:
        second_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert second_pid != first_pid
    engine.dispose()


def test_a_transaction_a_stalled_runner_left_open_lets_go_of_its_row_locks(pg_url: str) -> None:
    """Issue 23, items 18-19: a worker SIGSTOPped inside a fenced write holds the job row's lock; the cancel and
    the other workers' reapers must not wait for it to wake (worker/supervisor.py's engines end such a
    transaction after IDLE_IN_TRANSACTION_S, before the API's response deadline would answer the cancel 503)."""
    assert IDLE_IN_TRANSACTION_S < RESPONSE_DEADLINE_S / 2, "a cancel behind a stalled runner would time out"
    runner = make_engine(pg_url, idle_in_transaction_s=IDLE_IN_TRANSACTION_S)
    others = make_engine(pg_url)
    with others.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS idle_lock_rows (id int PRIMARY KEY, note text)"))
        conn.execute(text("INSERT INTO idle_lock_rows VALUES (1, 'held') ON CONFLICT (id) DO NOTHING"))
    stalled = runner.connect()
    stalled.begin()
    stalled.execute(text("SELECT note FROM idle_lock_rows WHERE id = 1 FOR UPDATE"))  # then it stops
    with others.begin() as other:
        other.execute(text("SET LOCAL lock_timeout = '30s'"))  # fails the test instead of hanging it
        other.execute(text("UPDATE idle_lock_rows SET note = 'cancelled' WHERE id = 1"))
    with pytest.raises(DBAPIError):  # woken, the stalled runner finds its transaction gone
        stalled.execute(text("UPDATE idle_lock_rows SET note = 'stale' WHERE id = 1"))
    stalled.close()
    with others.connect() as conn:
        assert conn.execute(text("SELECT note FROM idle_lock_rows WHERE id = 1")).scalar_one() == "cancelled"
    runner.dispose()
    others.dispose()
