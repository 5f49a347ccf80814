"""Jobs: submit, list, show, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import jobs, state_machine
from api.deps import NO_NUL, JobId, SessionDep
from api.metric_queries import summarize_metrics
from api.models import MAX_ID, MAX_JOB_ID, Job, JobStatus
from api.queue import JobQueue
from api.schemas import JobList, JobOut, json_response
from api.settings import Settings
from api.spec_input import YAML_TYPES, confine_paths, parse_spec, read_body, spec_error
from vit.config import JobSpec

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
    # dependency solving cost more CPU than the INSERT. Parsing runs here; the blocking part, in one thread hop.
    state = request.app.state
    body = await read_body(request, limit=state.settings.max_spec_bytes)
    spec = parse_spec(body, request.headers.get("content-type", "application/json"))
    job = await run_in_threadpool(_store_and_enqueue, spec, state.settings, state.sessions, state.queue)
    return json_response(job, status_code=201)


def _store_and_enqueue(
    spec: JobSpec, settings: Settings, sessions: sessionmaker[Session], queue: JobQueue
) -> JobOut:
    spec = confine_paths(spec, settings)  # realpath: file system calls
    with sessions() as session:
        parent = _parent_of(spec, session=session)
        job = state_machine.submit(
            session=session, spec=spec, max_attempts=settings.max_attempts, parent=parent
        )
        session.commit()  # before enqueueing: the worker must find the job it is handed
        if job.wait_reason is None or state_machine.settle_waiting_job(session=session, job=job):
            queue.enqueue(job.id)
        return jobs.job_out(job)


def _parent_of(spec: JobSpec, *, session: Session) -> Job | None:
    if spec.init is None or spec.init.from_job is None:
        return None
    parent_id = spec.init.from_job
    # An id beyond the 32-bit column names no job (and PostgreSQL would refuse the comparison).
    parent = jobs.find_job(session=session, job_id=parent_id) if parent_id <= MAX_JOB_ID else None
    if parent is None:
        raise spec_error(("init", "from_job"), f"job {parent_id} does not exist", "job_not_found")
    wanted = spec.init.checkpoint
    if JobStatus(parent.status).finished:
        # A finished job's checkpoints are final: a name it never saved can only fail later, in the worker. A
        # cancelled or failed job is a fine starting point when it kept a checkpoint (a stopped long pretrain).
        names = [c.name for c in jobs.list_checkpoints(session=session, job_id=parent_id)]
        if not names and parent.status != JobStatus.succeeded:
            raise spec_error(
                ("init", "from_job"),
                f"job {parent_id} is {parent.status} and kept no checkpoint to start from",
                "job_not_usable",
            )
        if wanted is not None and wanted not in names:
            raise spec_error(
                ("init", "checkpoint"),
                f"job {parent_id} has no checkpoint {wanted!r}; it has {', '.join(names) or 'none'}",
                "checkpoint_not_found",
            )
    return parent


@router.get("")
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    kind: Literal["pretrain", "finetune"] | None = None,
    parent: Annotated[
        int | None, Query(ge=1, le=MAX_JOB_ID, description="Only the fine-tunes of this job.")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Only names containing this text.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobList:
    """Jobs, newest first, and how many match the filters in all."""
    rows, total = jobs.list_jobs(
        session=session, status=status, kind=kind, parent=parent, name=q, limit=limit, offset=offset
    )
    return JobList(items=jobs.jobs_out(session=session, jobs=rows), total=total)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "Unknown job"}})
def get_job(job_id: JobId, session: SessionDep) -> Response:
    job = jobs.get_job(session=session, job_id=job_id)
    return json_response(jobs.job_out(job, summarize_metrics(session=session, job_ids=[job_id]).get(job_id)))


@router.post(
    "/{job_id}/cancel", status_code=202, responses={404: {}, 409: {"description": "Already finished"}}
)
def cancel_job(job_id: JobId, session: SessionDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops within seconds (it checkpoints first)."""
    job = state_machine.request_cancel(session=session, job_id=job_id)
    return jobs.job_out(job, summarize_metrics(session=session, job_ids=[job_id]).get(job_id))
