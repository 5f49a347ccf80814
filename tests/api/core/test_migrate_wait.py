"""`python -m api.core.migrate` (the compose migrate service) waits for the database to accept connections."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy.exc import OperationalError

from api.core.migrate import wait_for_database


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket closes


def test_gives_up_after_the_timeout_with_the_last_error() -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{closed_port()}/none"
    start = time.monotonic()
    with pytest.raises(OperationalError):
        wait_for_database(url, timeout_s=1.5, interval_s=0.2)
    assert 1.5 <= time.monotonic() - start < 15


def test_returns_once_the_database_answers(pg_url: str) -> None:
    start = time.monotonic()
    wait_for_database(pg_url, timeout_s=10)
    assert time.monotonic() - start < 5
