"""A job's train.log (the launcher's stdout and stderr, written by the worker): its tail, any page of it, a search,
and the whole file. Owner-checked like every job route; a job without a log yet reads as an empty one (its
download is a 404: there is no file to send)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy.orm import Session

from api.core import reads
from api.core.schemas import LogMatchOut, LogPageOut, LogSearchOut
from api.core.settings import Settings
from api.core.state_machine import Principal
from api.server.auth import PrincipalDep
from api.server.deps import JobId, SessionDep, SettingsDep
from api.server.log_files import SCAN_BLOCK_BYTES, read_page, search, tail_lines
from vit.rundir import LOG_FILE

router = APIRouter(tags=["logs"])
ONE_LINE = r"^[^\x00\r\n]*$"  # a search is for text within a line


def _log_path(session: Session, settings: Settings, principal: Principal, job_id: int) -> Path:
    reads.get_job(session=session, job_id=job_id, principal=principal)
    return settings.run_dir(job_id) / LOG_FILE


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, responses={404: {}})
def get_logs(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    tail: Annotated[int, Query(ge=1, le=100_000, description="How many of the last lines.")] = 200,
) -> PlainTextResponse:
    path = _log_path(session, settings, principal, job_id)
    text = tail_lines(path, tail) if path.is_file() else ""
    return PlainTextResponse(text)


@router.get("/jobs/{job_id}/logs/lines", responses={404: {}})
def get_log_lines(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    start: Annotated[int, Query(ge=1, le=2**31 - 1, description="The first line's number (1-based).")] = 1,
    count: Annotated[int, Query(ge=1, le=5_000, description="How many lines.")] = 500,
) -> LogPageOut:
    """A page of the whole log, and how many lines it has: the dashboard's log view pages through it."""
    path = _log_path(session, settings, principal, job_id)
    if not path.is_file():
        return LogPageOut(start=start, lines=[], total_lines=0, size_bytes=0)
    page = read_page(path, start, count)
    return LogPageOut(
        start=page.start, lines=page.lines, total_lines=page.total_lines, size_bytes=page.size_bytes
    )


@router.get("/jobs/{job_id}/logs/search", responses={404: {}})
def search_log(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    q: Annotated[
        str,
        Query(
            min_length=1, max_length=200, pattern=ONE_LINE, description="Text to find (literal, not a regex)."
        ),
    ],
    match_case: Annotated[bool, Query(description="Tell capitals from small letters.")] = False,
    limit: Annotated[int, Query(ge=1, le=1_000, description="At most this many matching lines.")] = 200,
) -> LogSearchOut:
    """The lines holding `q` (the first `limit`, in order), with their line numbers."""
    path = _log_path(session, settings, principal, job_id)
    found, more = search(path, q, match_case=match_case, limit=limit) if path.is_file() else ([], False)
    return LogSearchOut(
        query=q,
        match_case=match_case,
        matches=[LogMatchOut(line=m.line, text=m.text, cut=m.cut) for m in found],
        more=more,
    )


@router.get(
    "/jobs/{job_id}/logs/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}, 404: {}},
)
def download_log(
    job_id: JobId, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> StreamingResponse:
    """The whole train.log as it is when the download starts (a running job's later lines are not in it)."""
    path = _log_path(session, settings, principal, job_id)
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise HTTPException(404, f"job {job_id} has no log yet") from None
    size = file.seek(0, 2)
    file.seek(0)
    return StreamingResponse(
        _read(file, size),
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="job{job_id}-train.log"',
            "Content-Length": str(size),
        },
    )


def _read(file: BinaryIO, size: int) -> Iterator[bytes]:
    """`size` bytes of an open file, in blocks, closing it at the end (or when the client goes away)."""
    try:
        while size > 0:
            block = file.read(min(SCAN_BLOCK_BYTES, size))
            if not block:
                break
            size -= len(block)
            yield block
    finally:
        file.close()
