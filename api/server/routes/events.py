"""A job's changes as server-sent events: the job, new metric points, new log lines, and its end."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.core import reads
from api.core.models import MAX_ID
from api.server.auth import PrincipalDep
from api.server.deps import JobId
from api.server.watch import Feeds, delta_reader, stream

router = APIRouter(tags=["jobs"])


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "Unknown job"}},
    operation_id="watch_job",
)
async def watch_job(
    job_id: JobId,
    request: Request,
    principal: PrincipalDep,
    since: Annotated[
        int | None,
        Query(
            ge=0, le=MAX_ID, description="Metric cursor to start after (0: every point); default: only new."
        ),
    ] = None,
    log_offset: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Byte offset of train.log to start at; default: only new."),
    ] = None,
    log_tail: Annotated[
        int | None, Query(ge=1, le=100_000, description="Without log_offset: the log's last lines first.")
    ] = None,
) -> StreamingResponse:
    """Events `job` (the job as GET /jobs/{id} shows it, whenever it changes), `metrics` (new points, as GET
    /jobs/{id}/metrics with its cursor), `log` (new lines of train.log) and `end` (the job finished; the stream
    closes). One feed per job serves every watcher."""
    state = request.app.state

    def visible() -> None:
        with state.sessions() as session:
            reads.get_job(session=session, job_id=job_id, principal=principal)  # 404 for another owner's

    await run_in_threadpool(visible)
    feeds: Feeds = state.feeds
    events = stream(
        feeds,
        job_id,
        since=since,
        log_offset=log_offset,
        log_tail=log_tail,
        read_delta=delta_reader(job_id, state.sessions, state.settings),
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)
