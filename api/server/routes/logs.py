"""The tail of a job's train.log (the launcher's stdout and stderr, written by the worker)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from api.core import reads
from api.server.auth import PrincipalDep
from api.server.deps import JobId, SessionDep, SettingsDep
from api.server.log_files import tail_lines
from vit.rundir import LOG_FILE

router = APIRouter(tags=["logs"])


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, responses={404: {}})
def get_logs(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    tail: Annotated[int, Query(ge=1, le=100_000, description="How many of the last lines.")] = 200,
) -> PlainTextResponse:
    reads.get_job(session=session, job_id=job_id, principal=principal)
    path = settings.run_dir(job_id) / LOG_FILE
    text = tail_lines(path, tail) if path.is_file() else ""
    return PlainTextResponse(text)
