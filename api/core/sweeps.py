"""Sweeps in the database: make the children of a sweep (all or none; a search's are asked for later, by
api/core/search.py), list and show sweeps with their children's best metrics, and cancel every child. The request
itself is read by api/core/sweep_spec.py."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core import reads, state_machine
from api.core.errors import JobStateError, SweepNotFoundError
from api.core.metric_queries import BEST_METRIC
from api.core.models import LOCAL_OWNER, Job, JobStatus, MetricPoint, Sweep
from api.core.schemas import SweepChild, SweepOut, SweepSummary
from api.core.state_machine import Principal
from api.core.sweep_spec import SweepSpec, value_at
from vit.config import JobSpec


def create_sweep(
    *,
    session: Session,
    sweep: SweepSpec,
    children: Sequence[tuple[JobSpec, Job | None]],
    max_attempts: int,
    owner: str = LOCAL_OWNER,
) -> tuple[Sweep, list[Job]]:
    """The sweep and its queued children, added in the session's transaction (the caller commits once)."""
    row = Sweep(
        name=sweep.display_name,
        spec=sweep.model_dump(mode="json", exclude_none=True),
        owner=owner,
        method=sweep.method,
    )
    session.add(row)
    session.flush()  # the sweep's id, for the children
    made = []
    for spec, parent in children:
        job = state_machine.submit(
            session=session, spec=spec, max_attempts=max_attempts, parent=parent, owner=owner
        )
        job.sweep_id = row.id
        made.append(job)
    return row, made


def get_sweep(*, session: Session, sweep_id: int, principal: Principal) -> Sweep:
    """The sweep, if `principal` may see it (the owner rule of api.core.state_machine.visible_to); 404 otherwise."""
    row = session.get(Sweep, sweep_id)
    if row is None or not state_machine.may_see(principal, row.owner):
        raise SweepNotFoundError(sweep_id)
    return row


def children_of(*, session: Session, sweep_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)).all())


def list_sweeps(
    *, session: Session, principal: Principal, limit: int, offset: int
) -> tuple[list[Sweep], int]:
    """Newest first, and how many there are (those `principal` may see)."""
    mine = state_machine.visible_rows(principal, Sweep.owner)
    total = session.scalar(select(func.count()).select_from(Sweep).where(*mine)) or 0
    rows = session.scalars(
        select(Sweep)
        .where(*mine)
        .order_by(Sweep.created_at.desc(), Sweep.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def cancel_sweep(*, session: Session, sweep_id: int, principal: Principal) -> Sweep:
    """Cancel every child that has not finished (queued ones at once, running ones stop within seconds); a
    search asks for no more."""
    row = get_sweep(session=session, sweep_id=sweep_id, principal=principal)
    if row.method is not None and row.cancelled_at is None:
        row.cancelled_at = state_machine.now()
        session.commit()
    for job in children_of(session=session, sweep_id=sweep_id):
        if not JobStatus(job.status).finished:
            # It may finish between the read and the cancel: then there is nothing left to stop.
            with suppress(JobStateError):
                state_machine.request_cancel(session=session, job_id=job.id, principal=principal)
    return row


def summaries(*, session: Session, sweeps: Sequence[Sweep]) -> list[SweepSummary]:
    """Each sweep with its children counted by status and its best val_top1: two grouped queries in all."""
    ids = [row.id for row in sweeps]
    counts: dict[int | None, dict[str, int]] = {sweep_id: {} for sweep_id in ids}
    for sweep_id, status, count in session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(ids))
        .group_by(Job.sweep_id, Job.status)
    ):
        counts[sweep_id][str(status)] = count
    best: dict[int | None, float] = {
        sweep_id: value
        for sweep_id, value in session.execute(
            select(Job.sweep_id, func.max(MetricPoint.value))
            .join(MetricPoint, MetricPoint.job_id == Job.id)
            .where(Job.sweep_id.in_(ids), MetricPoint.name == BEST_METRIC)
            .group_by(Job.sweep_id)
        )
    }
    return [_summary(row, counts[row.id], best.get(row.id)) for row in sweeps]


def _summary(row: Sweep, counts: dict[str, int], best: float | None) -> SweepSummary:
    spec = SweepSpec.model_validate(row.spec)
    search = spec.searching
    return SweepSummary(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        mode=spec.mode,
        fields=spec.fields,
        spec=row.spec,
        job_count=sum(counts.values()),
        status_counts=counts,
        best_val_top1=best,
        searching=search,
        max_jobs=spec.budget if search else None,
        parallel=spec.slots if search else None,
        metric=spec.objective.name if search else None,
        goal=("maximize" if spec.objective.maximize else "minimize") if search else None,
        ended=row.ended_at is not None,
    )


def sweep_out(*, session: Session, row: Sweep) -> SweepOut:
    [summary] = summaries(session=session, sweeps=[row])
    children = children_of(session=session, sweep_id=row.id)
    outs = reads.jobs_out(session=session, jobs=children)
    return SweepOut(
        **summary.model_dump(),
        jobs=[
            SweepChild(params=params_of(job.spec, summary.fields), job=out, trial=job.trial)
            for job, out in zip(children, outs, strict=True)
        ],
    )


def params_of(spec: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {path: value_at(spec, path) for path in fields}
