"""Typed dependencies: what a route needs, taken from the app's state (built once by `create_app`).

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool, and a thread hop per
dependency costs more than what these do. Only closing a session may wait on the database, so that alone goes
to a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.core.broker import JobQueue
from api.core.models import MAX_JOB_ID
from api.core.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.sessions()  # no connection until the first query
    try:
        yield session
    finally:
        if session.in_transaction():  # returning the connection rolls back: a round trip
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


# PostgreSQL's text cannot hold a NUL character (the query would fail with a 500): a pattern for every string
# parameter that reaches the database.
NO_NUL = r"^[^\x00]*$"

JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="A job's id.")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
