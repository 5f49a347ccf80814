"""Data access for the API: small keyword-only functions over a Session. Routes call these; they never build
queries themselves. Every state change is a conditional UPDATE, so the API and the workers never overwrite each
other's transitions (a worker may claim a job between our read and our write)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.metric_queries import MetricSummary, summarize_metrics
from api.models import MAX_ID, Checkpoint, Job, JobStatus, utcnow
from api.schemas import JobOut
from vit.config import JobSpec


class JobNotFoundError(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")


class JobStateError(Exception):
    """The job's state forbids the action (HTTP 409)."""


def waiting_reason(parent_id: int) -> str:
    return f"waiting for job {parent_id} to succeed"


def create_job(*, session: Session, spec: JobSpec, max_attempts: int, parent: Job | None) -> Job:
    """Add a queued job holding the resolved spec (not committed). A job whose parent has not finished yet
    waits: the worker enqueues it when the parent succeeds."""
    resolved = spec.resolved()
    waits = parent is not None and not JobStatus(parent.status).finished
    job = Job(
        name=resolved.name,
        kind=resolved.kind,
        status=JobStatus.queued,
        spec=resolved.model_dump(mode="json"),
        parent_job_id=parent.id if parent is not None else None,
        max_attempts=max_attempts,
        total_steps=resolved.train.steps,
        wait_reason=waiting_reason(parent.id) if waits and parent is not None else None,
        created_at=utcnow(),
    )
    session.add(job)
    return job


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    return job


def find_job(*, session: Session, job_id: int) -> Job | None:
    if job_id > MAX_ID:  # no such row, and the driver could not even send the number
        return None
    return session.get(Job, job_id)


def list_jobs(
    *,
    session: Session,
    status: JobStatus | None,
    kind: str | None,
    limit: int,
    offset: int,
    parent: int | None = None,
    name: str | None = None,
) -> tuple[list[Job], int]:
    """Newest first, and the total number of jobs that match the filters (`name`: a case-blind substring)."""
    filters: list[Any] = []
    if status is not None:
        filters.append(Job.status == status)
    if kind is not None:
        filters.append(Job.kind == kind)
    if parent is not None:
        filters.append(Job.parent_job_id == parent)
    if name:
        filters.append(Job.name.ilike(f"%{_escape_like(name)}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(Job).where(*filters)) or 0
    rows = session.scalars(
        select(Job).where(*filters).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def request_cancel(*, session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its supervisor to stop. Committed."""
    now = utcnow()
    # Two tries: the job may move queued -> running between the two conditional updates.
    for _ in range(2):
        cancelled = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.cancelled, finished_at=now, wait_reason=None)
        )
        if cancelled.rowcount:  # type: ignore[attr-defined]
            fail_waiting_children(
                session=session, parent_id=job_id, error=f"parent job {job_id} was cancelled"
            )
            break
        flagged = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(cancel_requested=True)
        )
        if flagged.rowcount:  # type: ignore[attr-defined]
            break
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status is None:
            raise JobNotFoundError(job_id)
        if JobStatus(status).finished:
            raise JobStateError(f"job {job_id} is {status}; it cannot be cancelled")
    session.commit()
    return get_job(session=session, job_id=job_id)


def fail_waiting_children(*, session: Session, parent_id: int, error: str) -> None:
    """Jobs waiting on a parent that will never succeed fail now, and so do jobs waiting on them."""
    pending = [(parent_id, error)]
    while pending:
        parent, reason = pending.pop()
        failed = session.scalars(
            update(Job)
            .where(Job.parent_job_id == parent, Job.status == JobStatus.queued)
            .values(status=JobStatus.failed, error=reason, wait_reason=None, finished_at=utcnow())
            .returning(Job.id)
        ).all()
        pending += [(child, f"parent job {child} failed: {reason}") for child in failed]


def settle_waiting_job(*, session: Session, job: Job) -> bool:
    """Close the race with a parent finishing while this job was being stored (the worker enqueues waiting
    children only when the parent succeeds, and may have looked before our commit). Call after the commit.
    Returns True when the job no longer waits and must be enqueued now."""
    if job.wait_reason is None or job.parent_job_id is None:
        return False
    parent_status = session.scalar(select(Job.status).where(Job.id == job.parent_job_id))
    if parent_status == JobStatus.succeeded:
        released = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued, Job.wait_reason.is_not(None))
            .values(wait_reason=None)
        )
        session.commit()
        job.wait_reason = None
        return bool(released.rowcount)  # type: ignore[attr-defined]
    if parent_status in (JobStatus.failed, JobStatus.cancelled):
        fail_waiting_children(
            session=session,
            parent_id=job.parent_job_id,
            error=f"parent job {job.parent_job_id} {parent_status}",
        )
        session.commit()
        session.refresh(job)
    return False


def list_checkpoints(*, session: Session, job_id: int) -> Sequence[Checkpoint]:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step, Checkpoint.id)
    ).all()


def find_checkpoint(*, session: Session, job_id: int, name: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))


def job_out(job: Job, summary: MetricSummary | None = None) -> JobOut:
    summary = summary or MetricSummary()
    batch_size = int(job.spec.get("train", {}).get("batch_size", 0))
    remaining = max(job.total_steps - job.step, 0)
    eta = None
    if job.status == JobStatus.running and summary.images_per_s and batch_size:
        eta = remaining * batch_size / summary.images_per_s  # seconds per step = batch / images per second
    return JobOut(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=str(job.status),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        step=job.step,
        total_steps=job.total_steps,
        progress=min(job.step / job.total_steps, 1.0) if job.total_steps else 0.0,
        resumed_from_step=job.resumed_from_step,
        wait_reason=job.wait_reason,
        cancel_requested=job.cancel_requested,
        error=job.error,
        worker=job.worker,
        parent_job_id=job.parent_job_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        spec=job.spec,
        latest_metrics=summary.latest,
        best_val_top1=summary.best_val_top1,
        images_per_s=summary.images_per_s,
        eta_seconds=eta,
    )


def jobs_out(*, session: Session, jobs: Sequence[Job]) -> list[JobOut]:
    summaries = summarize_metrics(session=session, job_ids=[job.id for job in jobs])
    return [job_out(job, summaries.get(job.id)) for job in jobs]
