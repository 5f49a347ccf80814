"""The worker side's data access: claim, heartbeat, metrics, checkpoints, final state, lease recovery.

Every transition is one conditional UPDATE whose WHERE clause states what the caller believes (status, attempt,
holder), so two workers racing for the same job cannot both win, and a worker that lost its lease cannot
overwrite the state another worker now owns. Each function commits its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.models import Checkpoint, Job, JobStatus, MetricPoint

FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class MetricRow(NamedTuple):
    name: str
    step: int
    value: float
    time: float


class CheckpointFile(NamedTuple):
    """A complete checkpoint directory found under RUN_DIR/checkpoints (it has meta.json)."""

    name: str
    step: int
    size_bytes: int


@dataclass(frozen=True)
class Claim:
    """What a worker holds after a successful claim: the job's id and the attempt it runs."""

    job_id: int
    attempt: int
    max_attempts: int
    worker: str
    spec: dict[str, Any]
    parent_job_id: int | None


def _now() -> datetime:
    return datetime.now(UTC)


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


def claim_job(*, session: Session, job_id: int, worker: str) -> Claim | None:
    """Move a queued job to running for `worker`; None when there is nothing to claim.

    A second delivery of the same task, a cancelled job, a job waiting for its parent or a job another worker
    claimed first all give None. A fine-tune whose parent has not succeeded is parked (wait_reason) or failed.
    """
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()
    if job is None or job.status != JobStatus.queued or job.wait_reason or job.cancel_requested:
        session.rollback()
        return None
    if job.parent_job_id is not None and not _parent_ready(session=session, job=job):
        return None
    observed_attempt = job.attempt
    now = _now()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.queued,
            Job.attempt == observed_attempt,
            Job.wait_reason.is_(None),
            Job.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.running,
            attempt=observed_attempt + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=job.started_at or now,
        )
    )
    session.commit()
    if _rowcount(result) != 1:
        return None
    return Claim(
        job_id=job_id,
        attempt=observed_attempt + 1,
        max_attempts=job.max_attempts,
        worker=worker,
        spec=dict(job.spec),
        parent_job_id=job.parent_job_id,
    )


def _parent_ready(*, session: Session, job: Job) -> bool:
    """True when the parent succeeded; otherwise park the child (parent unfinished) or fail it."""
    parent = session.get(Job, job.parent_job_id)
    if parent is not None and parent.status == JobStatus.succeeded:
        return True
    if parent is not None and parent.status not in FINISHED:
        reason = f"waiting for job {parent.id} ({parent.status.value}) to finish"
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued, Job.wait_reason.is_(None))
            .values(wait_reason=reason)
        )
    else:
        _fail_orphan(session=session, child_id=job.id, parent=parent, parent_id=job.parent_job_id)
    session.commit()
    return False


def _fail_orphan(*, session: Session, child_id: int, parent: Job | None, parent_id: int | None) -> None:
    if parent is None:
        error = f"parent job {parent_id} does not exist"
    elif parent.status == JobStatus.cancelled:
        error = f"parent job {parent.id} was cancelled"
    else:
        error = f"parent job {parent.id} failed: {parent.error or 'no error recorded'}"
    session.execute(
        update(Job)
        .where(Job.id == child_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.failed, error=error, wait_reason=None, finished_at=_now())
    )


def record_resume(*, session: Session, claim: Claim, resumed_from_step: int | None) -> None:
    """Start the attempt from a clean metric history: the supervisor re-ingests metrics.jsonl (which it has
    cut back to the resumed checkpoint), so rows of a dead attempt past that step never linger."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == claim.job_id))
    session.execute(
        update(Job)
        .where(*_held_by(claim))
        .values(resumed_from_step=resumed_from_step, step=resumed_from_step or 0)
    )
    session.commit()


def _held_by(claim: Claim) -> tuple[Any, ...]:
    return (
        Job.id == claim.job_id,
        Job.status == JobStatus.running,
        Job.worker == claim.worker,
        Job.attempt == claim.attempt,
    )


def heartbeat(*, session: Session, claim: Claim, step: int) -> bool:
    """Refresh the lease and the progress. False: the lease was lost (the job was requeued or finished
    elsewhere), and the caller must stop its trainer at once."""
    result = session.execute(update(Job).where(*_held_by(claim)).values(heartbeat_at=_now(), step=step))
    session.commit()
    return _rowcount(result) == 1


def cancel_requested(*, session: Session, job_id: int) -> bool:
    flag = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none()
    session.rollback()  # end the read transaction so the next poll sees new commits
    return bool(flag)


def add_metric_points(*, session: Session, job_id: int, points: Sequence[MetricRow]) -> None:
    """Bulk insert: COPY on PostgreSQL (the fastest path psycopg has), one executemany elsewhere."""
    if not points:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        raw = connection.connection.driver_connection
        assert raw is not None
        statement = "COPY metric_points (job_id, name, step, value, time) FROM STDIN"
        try:
            with raw.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write(
                    "".join(
                        f"{job_id}\t{_copy_text(p.name)}\t{p.step}\t{p.value!r}\t{p.time!r}\n" for p in points
                    )
                )
        except psycopg.Error as error:
            # The raw driver's errors bypass SQLAlchemy's wrapping: raise them as SQLAlchemy's, which is what
            # callers (the supervisor's outage handling) catch.
            raise DBAPIError(statement, None, error) from error
    else:
        session.execute(
            insert(MetricPoint),
            [
                {"job_id": job_id, "name": p.name, "step": p.step, "value": p.value, "time": p.time}
                for p in points
            ],
        )
    session.commit()


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (metric names come from the trainer's JSON keys)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def sync_checkpoints(*, session: Session, job_id: int, found: Sequence[CheckpointFile]) -> None:
    """Make the job's checkpoint rows match the complete checkpoint directories on disk."""
    listed = set(session.execute(select(Checkpoint.name).where(Checkpoint.job_id == job_id)).scalars())
    on_disk = {c.name for c in found}
    gone = listed - on_disk
    if gone:
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name.in_(gone)))
    new = [c for c in found if c.name not in listed]
    if new:
        session.execute(
            insert(Checkpoint),
            [{"job_id": job_id, "name": c.name, "step": c.step, "size_bytes": c.size_bytes} for c in new],
        )
    session.commit()


def checkpoint_name(*, session: Session, job_id: int, name: str | None) -> str | None:
    """The named checkpoint of a job if the database lists it, or its newest one when name is None."""
    query = select(Checkpoint.name).where(Checkpoint.job_id == job_id)
    query = query.where(Checkpoint.name == name) if name else query.order_by(Checkpoint.step.desc()).limit(1)
    found = session.execute(query).scalar_one_or_none()
    session.rollback()
    return found


def finish_job(
    *, session: Session, claim: Claim, status: JobStatus, error: str | None = None, step: int | None = None
) -> bool:
    """Record the final state; False when the caller no longer holds the job (nothing is written)."""
    if status not in FINISHED:
        raise ValueError(f"{status.value} is not a final state")
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": _now(), "wait_reason": None}
    if step is not None:
        values["step"] = step
    result = session.execute(update(Job).where(*_held_by(claim)).values(**values))
    session.commit()
    return _rowcount(result) == 1


def release_job(
    *, session: Session, claim: Claim, error: str | None = None, count_attempt: bool = True
) -> bool:
    """Put a held job back to queued (a retry, or a worker shutting down); the next claim resumes it.
    `count_attempt=False` gives the attempt back (a worker shutting down did not fail it: deploys and restarts
    must not use up a job's retries). False when nothing is to be enqueued: the job was lost, or a cancel was
    requested meanwhile (it ends cancelled here, since a queued job with a cancel request would never be
    claimed nor cancelled)."""
    if _cancel_instead(session=session, where=_held_by(claim)):
        return False
    attempt = claim.attempt if count_attempt else claim.attempt - 1
    result = session.execute(
        update(Job)
        .where(*_held_by(claim))
        .values(status=JobStatus.queued, worker=None, heartbeat_at=None, error=error, attempt=attempt)
    )
    session.commit()
    return _rowcount(result) == 1


def _cancel_instead(*, session: Session, where: tuple[Any, ...]) -> bool:
    """End a running job cancelled if its cancel was requested (the caller was about to requeue it)."""
    result = session.execute(
        update(Job)
        .where(*where, Job.cancel_requested.is_(True))
        .values(status=JobStatus.cancelled, worker=None, heartbeat_at=None, finished_at=_now())
    )
    session.commit()
    return _rowcount(result) == 1


def requeue_stale(*, session: Session, lease_seconds: float) -> list[int]:
    """Running jobs whose heartbeat is older than the lease belong to dead workers: requeue them (or fail them
    once they have used every attempt). Returns the ids to enqueue again."""
    cutoff = _now() - timedelta(seconds=lease_seconds)
    stale = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts, Job.worker).where(
            Job.status == JobStatus.running, Job.heartbeat_at < cutoff
        )
    ).all()
    requeued: list[int] = []
    for job_id, attempt, max_attempts, worker in stale:
        lost = f"worker {worker} stopped renewing its lease (attempt {attempt} of {max_attempts})"
        if attempt >= max_attempts:
            values: dict[str, Any] = {"status": JobStatus.failed, "error": lost, "finished_at": _now()}
        else:
            values = {"status": JobStatus.queued, "error": lost}
        where = (
            Job.id == job_id,
            Job.status == JobStatus.running,
            Job.attempt == attempt,
            Job.heartbeat_at < cutoff,
        )
        if _cancel_instead(session=session, where=where):
            continue
        result = session.execute(update(Job).where(*where).values(worker=None, heartbeat_at=None, **values))
        if _rowcount(result) == 1 and values["status"] == JobStatus.queued:
            requeued.append(job_id)
    session.commit()
    return requeued


def release_waiting_children(*, session: Session) -> list[int]:
    """Resolve fine-tunes parked on their parent: released when it succeeded (returned, to enqueue), failed
    when it failed or was cancelled."""
    waiting = session.execute(
        select(Job.id, Job.parent_job_id).where(
            Job.status == JobStatus.queued, Job.wait_reason.is_not(None), Job.parent_job_id.is_not(None)
        )
    ).all()
    released: list[int] = []
    for child_id, parent_id in waiting:
        parent = session.get(Job, parent_id)
        if parent is not None and parent.status == JobStatus.succeeded:
            result = session.execute(
                update(Job)
                .where(Job.id == child_id, Job.status == JobStatus.queued, Job.wait_reason.is_not(None))
                .values(wait_reason=None)
            )
            if _rowcount(result) == 1:
                released.append(child_id)
        elif parent is None or parent.status in FINISHED:
            _fail_orphan(session=session, child_id=child_id, parent=parent, parent_id=parent_id)
    session.commit()
    return released


def runnable_queued_jobs(*, session: Session, queued_before: datetime) -> list[int]:
    """Queued jobs that could run now and were created before the given time (candidates for a lost enqueue)."""
    ids = session.execute(
        select(Job.id).where(
            Job.status == JobStatus.queued,
            Job.wait_reason.is_(None),
            Job.cancel_requested.is_(False),
            Job.created_at < queued_before,
        )
    ).scalars()
    found = list(ids)
    session.rollback()
    return found
