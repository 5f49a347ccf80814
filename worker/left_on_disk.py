"""What a lost job left in its run directory, recorded when the reaper ends it (failed on its last attempt, or
cancelled as asked) instead of its runner: the checkpoints on disk and the metric lines its runner never stored.

A runner's own writes are fenced by its attempt and stop once the job has ended, so nothing else writes these
rows now; the job's row is locked meanwhile, so two reapers ending the same job's records take turns. Metric
points are added only past the last step stored, so what the runner stored is never repeated."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from api.core.models import Checkpoint, Job, MetricPoint
from api.core.state_machine import FINISHED
from vit import rundir


def record(*, session: Session, job_id: int, run_dir: Path) -> tuple[int, int]:
    """Checkpoints and metric points added for an ended job (none while it has not ended). Committed."""
    status = session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
    if status not in FINISHED:
        session.rollback()
        return 0, 0
    listed = set(session.scalars(select(Checkpoint.name).where(Checkpoint.job_id == job_id)))
    new = [c for c in rundir.scan_checkpoints(run_dir) if c.name not in listed]
    if new:
        session.execute(
            insert(Checkpoint),
            [{"job_id": job_id, "name": c.name, "step": c.step, "size_bytes": c.size_bytes} for c in new],
        )
    stored = session.scalar(select(func.max(MetricPoint.step)).where(MetricPoint.job_id == job_id))
    reader = rundir.MetricsReader(run_dir)
    points = []
    while batch := reader.read_new():
        points += [p for p in batch if stored is None or p.step > stored]
    if points:
        session.execute(
            insert(MetricPoint),
            [
                {"job_id": job_id, "name": p.name, "step": p.step, "value": p.value, "time": p.time}
                for p in points
            ],
        )
    session.commit()
    return len(new), len(points)
