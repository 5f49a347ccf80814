"""What an executor that launches jobs into another scheduler (Slurm today) records about them, beside their
status: the launch a queued job was handed to (`executor_ref`, "slurm:1234": the fence of that launch's claim)
and the executor's word on it while it waits (`executor_note`, Slurm's reason); a launch's claim
(`state_machine.claim_job`) records its nodes (`placement`). Status changes go through api.core.state_machine;
every write here is conditional on the state its caller saw, so a dispatcher that raced the API or a batch
script loses cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.core.models import Job, JobStatus
from api.core.state_machine import FINISHED, Claim, owners_at_running_limit, queue_order, runnable, won
from vit.config import JobSpec


@dataclass(frozen=True)
class Launch:
    """A job of the pool that names a launch, as the dispatcher reconciles it with the cluster."""

    job_id: int
    status: JobStatus
    attempt: int
    max_attempts: int
    executor_ref: str
    cancel_requested: bool
    executor_note: str | None
    nodes: tuple[str, ...]  # the running (or last) attempt's nodes


def unlaunched(
    *, session: Session, pool: str, limit: int, running_limit: int | None = None
) -> list[tuple[int, JobSpec, int]]:
    """Runnable jobs of `pool` that no launch holds yet, in queue order: (id, spec, attempt). With a running
    limit, an owner's launched and running jobs count toward it (a launch may start at any moment)."""
    query = select(Job.id, Job.spec, Job.attempt).where(
        *runnable(), Job.pool == pool, Job.executor_ref.is_(None)
    )
    if running_limit is not None:
        in_flight = (
            select(Job.owner)
            .where(
                (Job.status == JobStatus.running)
                | ((Job.status == JobStatus.queued) & Job.executor_ref.is_not(None))
            )
            .group_by(Job.owner)
            .having(func.count() >= running_limit)
        )
        query = query.where(
            Job.owner.not_in(in_flight), Job.owner.not_in(owners_at_running_limit(running_limit))
        )
    rows = session.execute(queue_order(query).limit(limit)).all()
    session.rollback()
    return [(int(r.id), JobSpec.model_validate(r.spec), int(r.attempt)) for r in rows]


def record_launch(*, session: Session, job_id: int, attempt: int, executor_ref: str, note: str) -> bool:
    """The job is handed to `executor_ref`; False (nothing written) when it stopped being runnable or another
    launch took it since it was read. Committed."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.executor_ref.is_(None), *runnable())
        .values(executor_ref=executor_ref, executor_note=note)
    )
    session.commit()
    return won(result)


def forget_launch(*, session: Session, job_id: int, executor_ref: str) -> bool:
    """A queued job's launch ended without running it to the end (a time limit, a hand-back, a Slurm job that
    is gone): it may be launched again. Committed."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.executor_ref == executor_ref)
        .values(executor_ref=None, executor_note=None)
    )
    session.commit()
    return won(result)


def note(*, session: Session, job_id: int, executor_ref: str, text: str | None) -> None:
    """The executor's word on a job's launch (shown as the queued job's wait_reason). Committed."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.executor_ref == executor_ref).values(executor_note=text)
    )
    session.commit()


def launches(*, session: Session, pool: str, prefix: str) -> list[Launch]:
    """The pool's unfinished jobs that name a launch of this executor (`prefix`: "slurm:")."""
    rows = session.execute(
        select(
            Job.id,
            Job.status,
            Job.attempt,
            Job.max_attempts,
            Job.executor_ref,
            Job.cancel_requested,
            Job.executor_note,
            Job.placement,
        ).where(Job.pool == pool, Job.status.not_in(FINISHED), Job.executor_ref.startswith(prefix))
    ).all()
    session.rollback()
    return [
        Launch(
            r[0], JobStatus(r[1]), r[2], r[3], r[4] or "", bool(r[5]), r[6], tuple((r[7] or "").split(","))
        )
        for r in rows
    ]


def statuses(*, session: Session, job_ids: Sequence[int]) -> dict[int, tuple[JobStatus, str | None]]:
    """(status, executor_ref) of each of these jobs that exists."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status, Job.executor_ref).where(Job.id.in_(job_ids))).all()
    session.rollback()
    return {int(r[0]): (JobStatus(r[1]), r[2]) for r in rows}


def running_claim(*, session: Session, job_id: int, executor_ref: str) -> Claim | None:
    """The claim a launch's rank-0 node won, as another node of that launch reads it (it writes nothing)."""
    job = session.get(Job, job_id, populate_existing=True)
    session.rollback()
    if job is None or job.status != JobStatus.running or job.executor_ref != executor_ref:
        return None
    return Claim(
        job_id=job.id,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        worker=job.worker or "",
        spec=JobSpec.model_validate(job.spec),
        parent_job_id=job.parent_job_id,
    )


def may_still_claim(*, session: Session, job_id: int, executor_ref: str) -> bool:
    """True while the job is queued for this launch (its rank-0 node has not claimed it yet)."""
    found = session.scalar(
        select(Job.id).where(Job.id == job_id, Job.executor_ref == executor_ref, *runnable())
    )
    session.rollback()
    return found is not None


def attempt_runs(*, session: Session, job_id: int, attempt: int) -> bool:
    """A non-leading node's check of its lease: the job still runs under its attempt (read only)."""
    found = session.scalar(
        select(Job.id).where(Job.id == job_id, Job.status == JobStatus.running, Job.attempt == attempt)
    )
    session.rollback()
    return found is not None


def cancel_requested(*, session: Session, job_id: int) -> bool:
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    session.rollback()
    return bool(flag)
