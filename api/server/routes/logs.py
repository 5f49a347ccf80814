"""The tail of a job's train.log (the launcher's stdout and stderr, written by the worker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from api.core import reads
from api.server.auth import PrincipalDep
from api.server.deps import JobId, SessionDep, SettingsDep

router = APIRouter(tags=["logs"])
LOG_FILE = "train.log"
BLOCK_BYTES = 64 * 1024
MAX_TAIL_BYTES = 16 * 1024 * 1024


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


def tail_lines(path: Path, count: int) -> str:
    """The last `count` lines, read backwards block by block: a long log is never read whole, and a log without
    newlines (a runaway progress bar) is cut at MAX_TAIL_BYTES."""
    blocks: list[bytes] = []
    newlines = read = 0
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        # count + 1 newlines guarantee `count` whole lines (the last line may lack its newline).
        while position > 0 and newlines <= count and read < MAX_TAIL_BYTES:
            size = min(BLOCK_BYTES, position)
            position -= size
            file.seek(position)
            block = file.read(size)
            blocks.append(block)
            newlines += block.count(b"\n")
            read += size
    data = b"".join(reversed(blocks))
    lines = data.splitlines(keepends=True)[-count:]
    return b"".join(lines).decode("utf-8", errors="replace")
