"""Liveness of the parts the service needs: the database and the broker, each checked with a short deadline,
and the workers (from their heartbeats): none alive while jobs wait is unhealthy, since those jobs never start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.core import state_machine, workers
from api.core.schemas import Health
from api.server.deps import QueueDep

router = APIRouter(tags=["health"])
PARTS = ("database", "broker")
DEADLINE_S = (
    3.0  # under the API's response deadline (api/server/unavailable.py), so /healthz itself always answers
)
# Each part is checked in threads of its own, side by side: a hung connection costs the deadline once, never
# holds one of the request threads (a frozen database may have hung all of those), and checks piling up behind
# a hung database cannot make the broker look down.
_checks = {part: ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"healthz-{part}") for part in PARTS}


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(request: Request, queue: QueueDep) -> JSONResponse:
    sessions = request.app.state.sessions
    lease = request.app.state.settings.lease_seconds
    seen: dict[str, tuple[str, list[str]]] = {}

    def database() -> None:
        with sessions() as session:
            seen["workers"] = _workers(session, lease)

    states = await asyncio.gather(_run("database", database), _run("broker", queue.check))
    results: dict[str, object] = dict(zip(PARTS, states, strict=True))
    results["workers"], results["live_workers"] = seen.get("workers", ("unknown: the database is down", []))
    healthy = all(results[part] == "ok" for part in PARTS) and not str(results["workers"]).startswith("down")
    return JSONResponse(results, status_code=200 if healthy else 503)


def _workers(session: Session, lease_seconds: float) -> tuple[str, list[str]]:
    alive = [w.name for w in workers.live(session=session, lease_seconds=lease_seconds)]
    if alive:
        return "ok", alive
    waiting = state_machine.runnable_count(session=session)
    if waiting:
        return f"down: no live worker while {waiting} job(s) wait", alive
    return "ok: none alive, no job waits", alive


async def _run(part: str, check: Callable[[], None]) -> str:
    future = asyncio.get_running_loop().run_in_executor(_checks[part], check)
    try:
        await asyncio.wait_for(future, timeout=DEADLINE_S)  # a hung thread is left behind
    except TimeoutError:
        return f"down: no answer within {DEADLINE_S:.0f} s"
    except Exception as error:
        return f"down: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return "ok"
