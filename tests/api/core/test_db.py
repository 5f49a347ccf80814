"""The pool replaces a connection the server dropped while it sat idle, instead of failing the next request."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

import api.core.db
from api.core.db import make_engine


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
