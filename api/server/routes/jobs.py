"""Jobs: submit, list, show, tag and annotate, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session, sessionmaker

from api.core import idempotency, job_notes, reads, state_machine, submit
from api.core.broker import JobQueue
from api.core.metric_queries import summarize_metrics
from api.core.models import MAX_ID, MAX_JOB_ID, JobStatus
from api.core.schemas import JobList, JobOut
from api.core.settings import Settings
from api.core.spec_input import YAML_TYPES, parse_spec
from api.server.auth import PrincipalDep, bearer_token, principal_of
from api.server.body import read_body
from api.server.deps import NO_NUL, JobId, SessionDep, SettingsDep
from api.server.responses import json_response
from api.server.threads import run_read, run_write

router = APIRouter(prefix="/jobs", tags=["jobs"])

# The body is read by hand (JSON or YAML), so its schema is declared here for /docs.
_SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
            **{
                t: {"schema": {"type": "string", "description": "The same spec as YAML."}} for t in YAML_TYPES
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    openapi_extra=_SPEC_BODY,
    responses={413: {"description": "Spec too large"}},
)
async def submit_job(request: Request) -> Response:
    """Store a training job (the spec with every default resolved) and queue it. A fine-tune whose
    `init.from_job` has not succeeded yet waits for it."""
    # The hottest write route takes its state from the app, not from dependencies: FastAPI's per-request
    # dependency solving cost more CPU than the INSERT. The token lookup, parsing and storing share one thread
    # hop, in that order: a request without a valid token learns nothing about its body (401 first).
    state = request.app.state
    authorization = request.headers.get("authorization")
    if state.settings.auth_required:
        bearer_token(authorization)  # no header: refused before the body is read
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    body = await read_body(request, limit=state.settings.max_spec_bytes)
    content_type = request.headers.get("content-type", "application/json")
    job, created = await run_write(
        request,
        _store_and_enqueue,
        body,
        content_type,
        key,
        authorization,
        state.settings,
        state.sessions,
        state.queue,
    )
    return json_response(job, status_code=201 if created else 200)


def _store_and_enqueue(
    body: bytes,
    content_type: str,
    key: str | None,
    authorization: str | None,
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: JobQueue,
) -> tuple[JobOut, bool]:
    """The job and whether it is new (False: the first job made with this Idempotency-Key)."""
    with sessions() as session:
        principal = principal_of(session=session, settings=settings, authorization=authorization)
        spec = parse_spec(body, content_type)
        job, created = submit.submit_job(
            session=session,
            queue=queue,
            settings=settings,
            principal=principal,
            spec=spec,
            idempotency_key=key,
        )
        return reads.job_out(job), created


@router.get("")
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    kind: Literal["pretrain", "finetune"] | None = None,
    parent: Annotated[
        int | None, Query(ge=1, le=MAX_JOB_ID, description="Only the fine-tunes of this job.")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Only names containing this text.")
    ] = None,
    sweep_id: Annotated[
        int | None, Query(ge=1, le=MAX_JOB_ID, description="Only the children of this sweep.")
    ] = None,
    lineage_of: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_JOB_ID, description="This job and its fine-tunes, theirs, and so on (init.from_job)."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobList:
    """Jobs, newest first, and how many match the filters in all."""
    rows, total = reads.list_jobs(
        session=session,
        principal=principal,
        status=status,
        kind=kind,
        parent=parent,
        name=q,
        sweep_id=sweep_id,
        lineage_of=lineage_of,
        limit=limit,
        offset=offset,
    )
    items = reads.shown(session=session, jobs=rows, settings=settings)
    return JobList(items=items, total=total)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "Unknown job"}})
async def get_job(job_id: JobId, request: Request) -> Response:
    # The hottest read, built as submit_job is: state from the app, the token lookup and the reads in one
    # thread hop, on a session without a transaction (no BEGIN and ROLLBACK round trips for a read).
    state = request.app.state
    authorization = request.headers.get("authorization")
    if state.settings.auth_required:
        bearer_token(authorization)
    return await run_read(request, _show_job, job_id, authorization, state.settings, state.reads)


def _show_job(
    job_id: int, authorization: str | None, settings: Settings, sessions: sessionmaker[Session]
) -> Response:
    with sessions() as session:
        principal = principal_of(session=session, settings=settings, authorization=authorization)
        out = reads.job_page(session=session, job_id=job_id, principal=principal, settings=settings)
    return json_response(out)


@router.post(
    "/{job_id}/cancel", status_code=202, responses={404: {}, 409: {"description": "Already finished"}}
)
def cancel_job(job_id: JobId, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops within seconds (it checkpoints first)."""
    job = state_machine.request_cancel(session=session, job_id=job_id, principal=principal)
    return reads.job_out(job, summarize_metrics(session=session, job_ids=[job_id]).get(job_id))


@router.patch("/{job_id}", responses={404: {"description": "Unknown job, or another owner's"}})
def annotate_job(
    job_id: JobId,
    change: job_notes.JobNotesIn,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> Response:
    """Set the job's tags and notes (its owner only); fields left out stay as they are."""
    job = job_notes.annotate(session=session, job_id=job_id, principal=principal, change=change)
    (out,) = reads.shown(session=session, jobs=[job], settings=settings)
    return json_response(out)
