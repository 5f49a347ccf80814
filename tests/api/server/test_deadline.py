"""ResponseDeadline, driven as ASGI: a response that has not started in time is a 503 (the late handler's sends
dropped), and one that started in time is never cut, however long it streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from starlette.types import Message, Receive, Scope, Send

from api.server.unavailable import RETRY_AFTER_S, ResponseDeadline

DEADLINE_S = 0.2
T = TypeVar("T")
SCOPE: Scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}


async def _receive() -> Message:
    await asyncio.sleep(3600)  # no request body, no disconnect
    raise AssertionError("unreachable")


async def call(app: ResponseDeadline) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(SCOPE, _receive, send)
    return sent


def run_alone(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own: an earlier test in this process (Playwright's sync API, under
    pytest-xdist) may have left an event loop running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_a_response_not_started_in_time_is_a_503_and_the_late_one_is_dropped() -> None:
    finished = asyncio.Event()

    async def hung(_scope: Scope, _receive: Receive, send: Send) -> None:
        await asyncio.sleep(DEADLINE_S * 3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})
        finished.set()

    async def scenario() -> list[Message]:
        sent = await call(ResponseDeadline(hung, seconds=DEADLINE_S))
        await asyncio.wait_for(finished.wait(), timeout=5)  # the late handler ran to its end...
        return sent

    start, body = run_alone(scenario())  # ...and nothing it sent went out
    assert start["status"] == 503
    assert (b"retry-after", str(RETRY_AFTER_S).encode()) in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"]) == {
        "detail": f"service unavailable: no response within {DEADLINE_S:.0f} s"
    }


def test_a_response_started_in_time_streams_past_the_deadline() -> None:
    async def streaming(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"a", b"b", b"c"):
            await asyncio.sleep(DEADLINE_S)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sent = run_alone(call(ResponseDeadline(streaming, seconds=DEADLINE_S)))
    assert sent[0]["status"] == 200
    assert b"".join(message.get("body", b"") for message in sent[1:]) == b"abc"


def test_an_error_before_the_deadline_propagates() -> None:
    async def failing(_scope: Scope, _receive: Receive, _send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_alone(call(ResponseDeadline(failing, seconds=DEADLINE_S)))
