"""The tail of a job's train.log (the launcher's stdout and stderr, written by the worker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from api import jobs
from api.deps import JobId, SessionDep, SettingsDep

router = APIRouter(tags=["logs"])
LOG_FILE = "train.log"
BLOCK_BYTES = 64 * 1024


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, responses={404: {}})
def get_logs(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    tail: Annotated[int, Query(ge=1, le=100_000, description="How many of the last lines.")] = 200,
) -> PlainTextResponse:
    jobs.get_job(session=session, job_id=job_id)
    path = settings.run_dir(job_id) / LOG_FILE
    text = tail_lines(path, tail) if path.is_file() else ""
    return PlainTextResponse(text)


def tail_lines(path: Path, count: int) -> str:
    """The last `count` lines, read backwards block by block: a long log is never read whole."""
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        position, data = end, b""
        # count + 1 newlines guarantee `count` whole lines (the last line may lack its newline).
        while position > 0 and data.count(b"\n") <= count:
            size = min(BLOCK_BYTES, position)
            position -= size
            file.seek(position)
            data = file.read(size) + data
    lines = data.splitlines(keepends=True)[-count:]
    return b"".join(lines).decode("utf-8", errors="replace")
