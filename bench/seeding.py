"""What the benches share to fill a database: a job held as a worker holds it, and plain metric rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert
from sqlalchemy.orm import Session

from api.core import state_machine
from api.core.models import MetricPoint
from vit.rundir import MetricPoint as Point


def hold_job(session: Session, job_id: int) -> state_machine.Claim:
    """Claim a queued job as a worker would, so the fenced ingest path accepts its rows."""
    claim = state_machine.claim(session=session, worker="bench")  # the head of the queue: call on a fresh one
    if claim is None or claim.job_id != job_id:
        raise RuntimeError(f"job {job_id} could not be claimed (a worker took it?)")
    return claim


def insert_points(session: Session, job_id: int, points: Sequence[Point]) -> None:
    """Seed rows for a job in any state (the dashboard bench's history), outside the worker's path."""
    if points:
        session.execute(
            insert(MetricPoint),
            [
                {"job_id": job_id, "name": p.name, "step": p.step, "value": p.value, "time": p.time}
                for p in points
            ],
        )
        session.commit()
