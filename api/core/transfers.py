"""Transfers in the database: store one with its children (in the caller's transaction), list and show them,
cancel every child, and assemble the paper's transfer table from the children's stored metrics. The request is
read by api/core/transfer_spec.py; submitting goes through api/core/submit.py like every job."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core import reads, state_machine
from api.core.errors import JobStateError, TransferNotFoundError
from api.core.metric_queries import summarize_metrics
from api.core.models import LOCAL_OWNER, Job, JobStatus, Transfer
from api.core.schemas import (
    TransferColumn,
    TransferOut,
    TransferRow,
    TransferSummary,
    TransferTable,
)
from api.core.state_machine import Principal
from api.core.transfer_spec import Child, TransferSpec, columns, labels

ROLES = ("probe", "finetune")


def create_transfer(
    *,
    session: Session,
    transfer: TransferSpec,
    children: Sequence[tuple[Child, Job]],
    owner: str = LOCAL_OWNER,
) -> Transfer:
    """The transfer row laying out its (already added) children, in the session's transaction."""
    session.flush()  # the children's ids
    layout: list[dict[str, Any]] = [
        {"dataset": label, "probe": None, "finetune": None} for label in labels(transfer)
    ]
    for child, job in children:
        layout[child.row][child.role] = job.id
    row = Transfer(
        name=transfer.display_name,
        spec=transfer.model_dump(mode="json", exclude_unset=True),
        layout=layout,
        owner=owner,
    )
    session.add(row)
    session.flush()
    return row


def get_transfer(*, session: Session, transfer_id: int, principal: Principal) -> Transfer:
    """The transfer, if `principal` may see it (as a sweep: the owner or an admin); 404 otherwise."""
    row = session.get(Transfer, transfer_id)
    if row is None or not state_machine.may_see(principal, row.owner):
        raise TransferNotFoundError(transfer_id)
    return row


def list_transfers(
    *, session: Session, principal: Principal, limit: int, offset: int
) -> tuple[list[Transfer], int]:
    """Newest first, and how many there are (those `principal` may see)."""
    mine = state_machine.visible_rows(principal, Transfer.owner)
    total = session.scalar(select(func.count()).select_from(Transfer).where(*mine)) or 0
    rows = session.scalars(
        select(Transfer)
        .where(*mine)
        .order_by(Transfer.created_at.desc(), Transfer.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def child_ids(row: Transfer) -> list[int]:
    """Per dataset, its probe then its fine-tune."""
    return [entry[role] for entry in row.layout for role in ROLES if entry[role] is not None]


def cancel_transfer(*, session: Session, transfer_id: int, principal: Principal) -> Transfer:
    """Cancel every child that has not finished (queued ones at once, running ones stop within seconds)."""
    row = get_transfer(session=session, transfer_id=transfer_id, principal=principal)
    for job in _children(session=session, row=row):
        if not JobStatus(job.status).finished:
            with suppress(JobStateError):  # it finished between the read and the cancel
                state_machine.request_cancel(session=session, job_id=job.id, principal=principal)
    return row


def summaries(*, session: Session, transfers: Sequence[Transfer]) -> list[TransferSummary]:
    """Each transfer with its table: two queries in all (the children, their latest metrics)."""
    ids = [job_id for row in transfers for job_id in child_ids(row)]
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
    latest = {job_id: s.latest for job_id, s in summarize_metrics(session=session, job_ids=ids).items()}
    return [_summary(row, jobs, latest) for row in transfers]


def transfer_out(*, session: Session, row: Transfer) -> TransferOut:
    [summary] = summaries(session=session, transfers=[row])
    return TransferOut(
        **summary.model_dump(), jobs=reads.jobs_out(session=session, jobs=_children(session=session, row=row))
    )


def _children(*, session: Session, row: Transfer) -> list[Job]:
    ids = child_ids(row)
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    return [jobs[job_id] for job_id in ids if job_id in jobs]


def _summary(row: Transfer, jobs: dict[int, Job], latest: dict[int, dict[str, float]]) -> TransferSummary:
    statuses = [str(jobs[job_id].status) for job_id in child_ids(row) if job_id in jobs]
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return TransferSummary(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        owner=row.owner,
        spec=row.spec,
        job_count=len(statuses),
        status_counts=counts,
        finished=all(JobStatus(status).finished for status in statuses),
        table=table(row, jobs, latest),
    )


def table(row: Transfer, jobs: dict[int, Job], latest: dict[int, dict[str, float]]) -> TransferTable:
    """Rows = datasets, columns = the probe's k-shot accuracies and the fine-tune's top-1. A cell is its child's
    last stored value of the column's metric once that child has succeeded (a running fine-tune's evaluations
    are not its result); the mean row waits for every dataset's value."""
    spec = TransferSpec.model_validate(row.spec)
    cols = columns(spec)
    rows = []
    for entry, data in zip(row.layout, spec.datasets, strict=True):
        status = {role: str(jobs[entry[role]].status) for role in ROLES if entry[role] in jobs}
        values: dict[str, float | None] = {}
        for col in cols:
            job_id = entry[col.role]
            done = status.get(col.role) == JobStatus.succeeded
            values[col.key] = latest.get(job_id, {}).get(col.key) if done and job_id is not None else None
        rows.append(
            TransferRow(
                dataset=entry["dataset"],
                data=data.model_dump(mode="json", exclude_unset=True),
                values=values,
                probe=entry["probe"],
                finetune=entry["finetune"],
                status=status,
            )
        )
    mean: dict[str, float | None] = {}
    for col in cols:
        cells = [r.values[col.key] for r in rows]
        known = [v for v in cells if v is not None]
        mean[col.key] = sum(known) / len(known) if known and len(known) == len(cells) else None
    return TransferTable(
        columns=[TransferColumn(key=c.key, label=c.label, role=c.role) for c in cols], rows=rows, mean=mean
    )


def table_csv(table: TransferTable) -> str:
    """The table as CSV: a header (dataset, then the column labels), a line per dataset, then the mean; values
    as stored (accuracies in 0..1), an empty cell where there is none yet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", *(c.label for c in table.columns)])
    for label, values in [*((r.dataset, r.values) for r in table.rows), ("mean", table.mean)]:
        writer.writerow(
            [label, *("" if values[c.key] is None else repr(values[c.key]) for c in table.columns)]
        )
    return out.getvalue()
