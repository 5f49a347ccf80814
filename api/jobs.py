"""The API's reads: small keyword-only functions over a Session. Routes call these; they never build queries
themselves. Every change of a job's state goes through api.state_machine, which the workers call too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.metric_queries import MetricSummary, summarize_metrics
from api.models import MAX_JOB_ID, Checkpoint, Job, JobStatus
from api.schemas import JobOut
from api.state_machine import JobNotFoundError


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    return job


def find_job(*, session: Session, job_id: int) -> Job | None:
    if job_id > MAX_JOB_ID:  # no such row (jobs.id is 32-bit), and PostgreSQL would refuse the comparison
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
