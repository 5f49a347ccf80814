"""Jobs: submit, list, show, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.core import idempotency, quotas, reads, state_machine, workers
from api.core.broker import JobQueue
from api.core.errors import invalid
from api.core.metric_queries import summarize_metrics
from api.core.models import MAX_ID, MAX_JOB_ID, Job, JobStatus
from api.core.schemas import JobList, JobOut
from api.core.settings import Settings
from api.core.spec_input import YAML_TYPES, confine_paths, parse_spec
from api.core.state_machine import Principal
from api.server.auth import PrincipalDep, bearer_token, principal_of
from api.server.body import read_body
from api.server.deps import NO_NUL, JobId, SessionDep, SettingsDep
from api.server.responses import json_response
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
    # dependency solving cost more CPU than the INSERT. The token lookup, parsing and storing share one thread
    # hop, in that order: a request without a valid token learns nothing about its body (401 first).
    state = request.app.state
    authorization = request.headers.get("authorization")
    if state.settings.auth_required:
        bearer_token(authorization)  # no header: refused before the body is read
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    body = await read_body(request, limit=state.settings.max_spec_bytes)
    content_type = request.headers.get("content-type", "application/json")
    job, created = await run_in_threadpool(
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
        request_hash = idempotency.spec_hash(spec) if key is not None else None
        if key is not None and request_hash is not None:
            first = idempotency.first_job(
                session=session, owner=principal.owner, key=key, request_hash=request_hash
            )
            if first is not None:
                return reads.job_out(first), False
        # realpath: file system calls
        spec = confine_paths(spec, settings, may_read_job=may_read_job(session, principal))
        parent = parent_of(spec, session=session, principal=principal)
        check_fits(spec, session=session, settings=settings)
        # Last before the INSERT: it holds the owner's lock until the commit (nothing may roll back in between).
        quotas.check(session=session, owner=principal.owner, specs=[spec], settings=settings)
        job = state_machine.submit(
            session=session,
            spec=spec,
            max_attempts=settings.max_attempts,
            parent=parent,
            owner=principal.owner,
            idempotency_key=key,
            request_hash=request_hash,
        )
        try:
            session.commit()  # before enqueueing: the worker must find the job it is handed
        except IntegrityError:
            if key is None or request_hash is None:
                raise
            session.rollback()  # another request with this key committed first: answer with its job
            first = idempotency.first_job(
                session=session, owner=principal.owner, key=key, request_hash=request_hash
            )
            if first is None:
                raise
            return reads.job_out(first), False
        if job.wait_reason is None or state_machine.settle_waiting_job(session=session, job=job):
            queue.enqueue(job.id, job.pool)
        return reads.job_out(job), True


def check_fits(spec: JobSpec, *, session: Session, settings: Settings) -> None:
    """A job that no live worker of its pool could ever run is a 422 naming the largest fit. With no worker of
    the pool alive yet, it is accepted and waits (its wait_reason says so)."""
    resources = spec.resources
    fit = workers.largest_fit(session=session, pool=resources.pool, lease_seconds=settings.lease_seconds)
    if fit is not None and resources.gpus_per_node > fit:
        raise invalid(
            ("resources", "procs_per_node"),
            f"needs {resources.gpus_per_node} GPUs on one node; the largest worker of pool {resources.pool!r} has "
            f"{fit}: at most procs_per_node {fit}",
            "does_not_fit",
        )
    if resources.nodes > 1:
        nodes = workers.nodes_that_fit(
            session=session,
            pool=resources.pool,
            gpus=resources.gpus_per_node,
            lease_seconds=settings.lease_seconds,
        )
        if nodes is not None and resources.nodes > nodes:
            raise invalid(
                ("resources", "nodes"),
                f"needs {resources.nodes} nodes (one worker each); pool {resources.pool!r} has {nodes} live "
                f"workers that fit a node of it: at most nodes {nodes}",
                "does_not_fit",
            )


def may_read_job(session: Session, principal: Principal) -> Callable[[int], bool] | None:
    """confine_paths' owner rule: which jobs' run directories `principal` may start from (None: any)."""
    if principal.is_admin:
        return None
    return lambda job_id: reads.find_job(session=session, job_id=job_id, principal=principal) is not None


def parent_of(spec: JobSpec, *, session: Session, principal: Principal) -> Job | None:
    if spec.init is None or spec.init.from_job is None:
        return None
    parent_id = spec.init.from_job
    # Another owner's job "does not exist" either: its existence does not leak.
    parent = reads.find_job(session=session, job_id=parent_id, principal=principal)
    if parent is None:
        raise invalid(("init", "from_job"), f"job {parent_id} does not exist", "job_not_found")
    wanted = spec.init.checkpoint
    if JobStatus(parent.status).finished:
        # A finished job's checkpoints are final: a name it never saved can only fail later, in the worker. A
        # cancelled or failed job is a fine starting point when it kept a checkpoint (a stopped long pretrain).
        names = [
            c.name for c in reads.list_checkpoints(session=session, job_id=parent_id, principal=principal)
        ]
        if not names and parent.status != JobStatus.succeeded:
            raise invalid(
                ("init", "from_job"),
                f"job {parent_id} is {parent.status} and kept no checkpoint to start from",
                "job_not_usable",
            )
        if wanted is not None and wanted not in names:
            raise invalid(
                ("init", "checkpoint"),
                f"job {parent_id} has no checkpoint {wanted!r}; it has {', '.join(names) or 'none'}",
                "checkpoint_not_found",
            )
    return parent


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
        limit=limit,
        offset=offset,
    )
    items = reads.jobs_out(
        session=session,
        jobs=rows,
        lease_seconds=settings.lease_seconds,
        running_limit=settings.max_running_jobs,
    )
    return JobList(items=items, total=total)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "Unknown job"}})
def get_job(job_id: JobId, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    job = reads.get_job(session=session, job_id=job_id, principal=principal)
    (out,) = reads.jobs_out(
        session=session,
        jobs=[job],
        lease_seconds=settings.lease_seconds,
        running_limit=settings.max_running_jobs,
    )
    return json_response(out)


@router.post(
    "/{job_id}/cancel", status_code=202, responses={404: {}, 409: {"description": "Already finished"}}
)
def cancel_job(job_id: JobId, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops within seconds (it checkpoints first)."""
    job = state_machine.request_cancel(session=session, job_id=job_id, principal=principal)
    return reads.job_out(job, summarize_metrics(session=session, job_ids=[job_id]).get(job_id))
