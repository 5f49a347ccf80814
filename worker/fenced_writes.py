"""What a running attempt writes besides its state: metric rows and checkpoint rows, each write fenced.

Every function opens its transaction with `state_machine.hold`, which locks the job row while the claim still
holds it, so the rows land only while this attempt owns the job: a runner that stalled past its lease and woke
up finds its writes refused (False) and stops. Each function commits its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.core.models import Checkpoint, MetricPoint
from api.core.state_machine import Claim, hold, record_progress_start
from vit.rundir import CheckpointInfo
from vit.rundir import MetricPoint as Point


def start_history(*, session: Session, claim: Claim, resumed_from_step: int | None) -> bool:
    """Begin the attempt's metric history where its trainer resumed: the rows are dropped and metrics.jsonl
    (which the trainer cut back to its checkpoint) is ingested again from the start, so no row of an earlier
    attempt past that step lingers and none repeats."""
    if not hold(session=session, claim=claim):
        return False
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == claim.job_id))
    return record_progress_start(session=session, claim=claim, resumed_from_step=resumed_from_step)


def add_metric_points(*, session: Session, claim: Claim, points: Sequence[Point], step: int) -> bool:
    """Bulk insert, fenced: COPY on PostgreSQL (the fastest path psycopg has), one executemany elsewhere. The
    job's progress moves to `step` in the same transaction, so it never lags the metrics it shows."""
    if not points:
        return True
    if not hold(session=session, claim=claim, step=step):
        return False
    connection = session.connection()
    job_id = claim.job_id
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
            # the supervisor's outage handling catches.
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
    return True


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (metric names come from the trainer's JSON keys)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def sync_checkpoints(*, session: Session, claim: Claim, found: Sequence[CheckpointInfo]) -> bool:
    """Make the job's checkpoint rows match the complete checkpoint directories on disk. Fenced."""
    if not hold(session=session, claim=claim):
        return False
    job_id = claim.job_id
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
    return True


def parent_checkpoint(*, session: Session, job_id: int, name: str | None) -> str | None:
    """The named checkpoint of a job if the database lists it, or its newest one when name is None."""
    query = select(Checkpoint.name).where(Checkpoint.job_id == job_id)
    query = query.where(Checkpoint.name == name) if name else query.order_by(Checkpoint.step.desc()).limit(1)
    found = session.execute(query).scalar_one_or_none()
    session.rollback()
    return found
