"""What the API answers when a part it needs is down or hung: 503 with a JSON body and Retry-After, never a 500
in text/plain and never a request that hangs.

Two ways in: a database error that means "cannot reach the database" (refused, cut, pool exhausted) is turned
into a 503 by an exception handler; a database that does not answer at all (a frozen server keeps its TCP
connections open, so no socket timeout fires) is caught by `ResponseDeadline`, which answers 503 when a response
has not started within a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_S = 5
RESPONSE_DEADLINE_S = 5.0
# Errors that say the database cannot be reached now, not that the request is wrong. OperationalError also
# covers SQLite's "database is locked", which is just as temporary.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
log = logging.getLogger(__name__)


def unavailable_response(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    cause = error.orig if isinstance(error, DBAPIError) else error
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return unavailable_response(f"database unavailable: {first_line}")


class ResponseDeadline:
    """Pure ASGI: a response that has not started within `seconds` is answered 503 in its place.

    The late handler is left running in the background (a thread blocked on a frozen socket cannot be
    interrupted) and whatever it sends later is dropped. A response that did start in time (a stream, a large
    download) is never cut."""

    def __init__(self, app: ASGIApp, seconds: float = RESPONSE_DEADLINE_S) -> None:
        self.app = app
        self.seconds = seconds
        self._late: set[asyncio.Task[None]] = set()  # referenced, or the loop may garbage-collect them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One future that the first of three settles: the response starting, the handler ending, the deadline. A
        # timer and a done-callback, not asyncio.wait over a waiter task: less bookkeeping on every request.
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[None] = loop.create_future()
        started = abandoned = False

        def decide(*_: object) -> None:
            if not decided.done():
                decided.set_result(None)

        async def send_unless_abandoned(message: Message) -> None:
            nonlocal started
            if abandoned:
                return
            if message["type"] == "http.response.start":
                started = True
                decide()
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive, send_unless_abandoned))
        handler.add_done_callback(decide)
        deadline = loop.call_later(self.seconds, decide)
        try:
            await decided
        except asyncio.CancelledError:
            handler.cancel()
            raise
        finally:
            deadline.cancel()
        # No await between this check and `abandoned = True`: the handler cannot start its response in between.
        if handler.done() or started:
            await handler
            return
        abandoned = True
        self._late.add(handler)
        handler.add_done_callback(self._forget)
        log.warning(
            "%s %s: no response within %.0f s, answered 503", scope["method"], scope["path"], self.seconds
        )
        await _send_json(
            send, 503, {"detail": f"service unavailable: no response within {self.seconds:.0f} s"}
        )

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._late.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a request answered 503 for its deadline failed later: %r", task.exception())


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
