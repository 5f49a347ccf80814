"""Liveness of the parts the API needs: the database and the broker, each checked with a short deadline."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import QueueDep
from api.schemas import Health

router = APIRouter(tags=["health"])
DEADLINE_S = 3.0
# Checks run in their own threads so that a hung connection costs the deadline, not the request.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthz")


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request, queue: QueueDep) -> JSONResponse:
    engine = request.app.state.engine

    def database() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    results = {"database": _run(database), "broker": _run(queue.check)}
    healthy = all(value == "ok" for value in results.values())
    return JSONResponse(results, status_code=200 if healthy else 503)


def _run(check: Callable[[], None]) -> str:
    future = _checks.submit(check)
    try:
        future.result(timeout=DEADLINE_S)
    except FutureTimeout:
        return f"down: no answer within {DEADLINE_S:.0f} s"
    except Exception as error:
        return f"down: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return "ok"
