"""Engine and session factory. No FastAPI here: the worker uses this module too."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str,
    *,
    connect_timeout_s: int = 10,
    pool_timeout_s: float = 30.0,
    idle_in_transaction_s: float | None = None,
) -> Engine:
    """The API passes small timeouts (a request must fail fast, with a 503, when the database is down or hung);
    the worker keeps the defaults. `idle_in_transaction_s` (PostgreSQL): the server ends a transaction left idle
    that long, and its locks with it: the worker's runners pass a few seconds, since a runner stalled
    (SIGSTOP, swapping) inside a fenced write would otherwise keep its job row locked, blocking the job's cancel
    and every worker's reaper until it woke. Only for callers that never wait on anything else in a transaction."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, pool_timeout=pool_timeout_s, connect_args={"timeout": 30, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            # JIT compilation costs tens of milliseconds on short queries whose cost the planner overestimates.
            "options": "-c jit=off"
            + (
                f" -c idle_in_transaction_session_timeout={max(1, int(idle_in_transaction_s * 1000))}"
                if idle_in_transaction_s
                else ""
            ),
            # A dead server or network must raise, not hang: the supervisor stops its trainer when it cannot
            # renew its lease, and a call that never returns would never get there.
            "connect_timeout": connect_timeout_s,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
    engine = create_engine(
        url, pool_size=10, max_overflow=20, pool_timeout=pool_timeout_s, connect_args=connect_args
    )
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


# A connection that sat idle may have been dropped (server restart, failover); one in steady use has just proven
# itself. Pinging only the idle ones keeps pool_pre_ping's safety without its round trip on every request.
IDLE_PING_SECONDS = 1.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception as error:
        # The pool discards this connection and checks out a fresh one.
        raise DisconnectionError(str(error)) from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache
def get_engine(url: str, idle_in_transaction_s: float | None = None) -> Engine:
    return make_engine(url, idle_in_transaction_s=idle_in_transaction_s)


def session_factory(url: str, *, idle_in_transaction_s: float | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url, idle_in_transaction_s), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    with session_factory(url)() as session:
        yield session


@contextmanager
def scratch_database(admin_url: str, prefix: str = "vitq_scratch") -> Iterator[str]:
    """A new empty PostgreSQL database on the server of `admin_url`, dropped on exit (tests, benchmarks)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
