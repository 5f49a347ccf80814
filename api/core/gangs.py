"""Gang start of multi-node jobs: all N nodes start together, or none holds a place past a timeout.

A free worker joins the gang of the FIRST multi-node runnable job of its pool that fits its free devices (only
the first: a worker is in one gang at a time and every worker of a pool aims at the same job, so two gangs never
each hold part of the other's workers). Joining inserts a `job_nodes` row taking the lowest free node rank of
the coming attempt; every change to a gang's membership first locks the job row with a conditional UPDATE that
is true only while the job is queued at the attempt the gang was formed for, so joins, leaves and the start
never interleave. The member that completes the gang moves the job to running (attempt + 1, the worker of rank
0 as the job's worker) in the same transaction: every member then runs its node under that one attempt, the
gang's shared fencing token. A member that waited too long leaves (deletes its row), unless the gang started
meanwhile, in which case it runs. Members renew their rows while the job runs; the reaper requeues a running
gang job when any member's row goes stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.core import state_machine
from api.core.models import Job, JobNode, JobStatus
from api.core.state_machine import QUEUE_ORDER, Claim, fits, now, requeue, runnable, won
from vit.config import JobSpec


@dataclass(frozen=True)
class Membership:
    """A worker's place in a forming or running gang."""

    job_id: int
    attempt: int  # the attempt the gang runs: the job's attempt + 1 while it forms
    node_rank: int
    nodes: int
    worker: str


@dataclass(frozen=True)
class Member:
    node_rank: int
    worker: str
    address: str
    port: int | None


@dataclass(frozen=True)
class Gang:
    """A started gang: the claim every member runs under, and the members in rank order."""

    claim: Claim
    members: tuple[Member, ...]

    @property
    def rendezvous(self) -> str:
        """host:port of the rank-0 node's rendezvous (torchrun --rdzv-endpoint)."""
        first = self.members[0]
        return f"{first.address}:{first.port}"


def first_gang_job(
    *, session: Session, pool: str, free_devices: Sequence[int] | None
) -> tuple[int, int] | None:
    """The multi-node job a free worker of `pool` should join, the first runnable one that fits it: (its id,
    the GPUs it needs on each node)."""
    query = select(Job.id, Job.gpus).where(
        *runnable(), *fits(pool=pool, free_devices=free_devices), Job.nodes > 1
    )
    row = session.execute(query.order_by(*QUEUE_ORDER).limit(1)).one_or_none()
    return None if row is None else (int(row.id), int(row.gpus))


def _lock_forming(*, session: Session, job_id: int, attempt: int) -> bool:
    """Lock the job row while it is queued for the gang of `attempt` (its attempt + 1). False: it moved on."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt - 1, *runnable())
        .values(attempt=Job.attempt)
    )
    return won(result)


def join(
    *,
    session: Session,
    job_id: int,
    worker: str,
    address: str,
    devices: Sequence[int] = (),
    choose_port: Callable[[], int],
    stale_after_seconds: float,
) -> Membership | None:
    """Take the lowest free node rank of the job's coming attempt (rank 0 stores the port `choose_port` gives);
    the member that fills the last rank starts the job in the same transaction. Committed. None: the job is no
    longer runnable or its gang is full. Members whose row was not renewed for `stale_after_seconds` (a worker
    that died while waiting) lose their place first."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.nodes < 2:
        session.rollback()
        return None
    attempt, nodes = job.attempt + 1, job.nodes
    if not _lock_forming(session=session, job_id=job_id, attempt=attempt):
        session.rollback()
        return None
    cutoff = now() - timedelta(seconds=stale_after_seconds)
    this_attempt = (JobNode.job_id == job_id, JobNode.attempt == attempt)
    session.execute(delete(JobNode).where(*this_attempt, JobNode.heartbeat_at < cutoff))
    rows = session.scalars(select(JobNode).where(*this_attempt)).all()
    mine = next((row for row in rows if row.worker == worker), None)
    if mine is not None:
        session.rollback()
        return Membership(job_id, attempt, mine.node_rank, nodes, worker)
    taken = {row.node_rank for row in rows}
    rank = min(set(range(nodes)) - taken, default=None)
    if rank is None:
        session.rollback()
        return None
    device_list = ",".join(map(str, devices)) or None
    session.add(
        JobNode(
            job_id=job_id,
            attempt=attempt,
            node_rank=rank,
            worker=worker,
            address=address,
            port=choose_port() if rank == 0 else None,
            devices=device_list,
            joined_at=now(),
            heartbeat_at=now(),
        )
    )
    try:
        session.flush()
    except IntegrityError:  # SQLite has no row lock: another join took the rank first
        session.rollback()
        return None
    if len(taken) + 1 == nodes:
        by_rank = sorted([*((row.node_rank, row.worker) for row in rows), (rank, worker)])
        members = [name for _, name in by_rank]
        state_machine.start_gang(session=session, job_id=job_id, attempt=attempt, members=members)
    session.commit()
    return Membership(job_id, attempt, rank, nodes, worker)


def started(*, session: Session, membership: Membership) -> Gang | None:
    """The gang once its job runs under the membership's attempt; None while it forms (or after it is gone).
    A forming member's poll also renews its row."""
    member_row = (
        JobNode.job_id == membership.job_id,
        JobNode.attempt == membership.attempt,
        JobNode.worker == membership.worker,
    )
    session.execute(update(JobNode).where(*member_row).values(heartbeat_at=now()))
    session.commit()
    job = session.get(Job, membership.job_id, populate_existing=True)
    if job is None or job.status != JobStatus.running or job.attempt != membership.attempt:
        return None
    rows = session.scalars(
        select(JobNode)
        .where(JobNode.job_id == membership.job_id, JobNode.attempt == membership.attempt)
        .order_by(JobNode.node_rank)
    ).all()
    if not any(row.worker == membership.worker for row in rows):
        return None
    members = tuple(Member(r.node_rank, r.worker, r.address, r.port) for r in rows)
    mine = next(r for r in rows if r.worker == membership.worker)
    claim = Claim(
        job_id=job.id,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        worker=job.worker or "",
        spec=JobSpec.model_validate(job.spec),
        parent_job_id=job.parent_job_id,
        devices=tuple(int(d) for d in mine.devices.split(",")) if mine.devices else (),
    )
    return Gang(claim=claim, members=members)


def forming(*, session: Session, membership: Membership) -> bool:
    """True while the job is still queued for this gang's attempt (the member should keep waiting)."""
    state = session.execute(select(Job.status, Job.attempt).where(Job.id == membership.job_id)).one_or_none()
    return state is not None and state[0] == JobStatus.queued and state[1] == membership.attempt - 1


def leave(*, session: Session, membership: Membership) -> bool:
    """Give up a place in a forming gang. False when the gang has started meanwhile: the member must run."""
    if _lock_forming(session=session, job_id=membership.job_id, attempt=membership.attempt):
        session.execute(
            delete(JobNode).where(
                JobNode.job_id == membership.job_id,
                JobNode.attempt == membership.attempt,
                JobNode.worker == membership.worker,
            )
        )
        session.commit()
        return True
    session.rollback()
    return started(session=session, membership=membership) is None


def renew(*, session: Session, membership: Membership) -> bool:
    """A running member's heartbeat. False once the job no longer runs under the gang's attempt: the member
    must stop its trainers at once."""
    job_holds = exists().where(
        Job.id == membership.job_id, Job.status == JobStatus.running, Job.attempt == membership.attempt
    )
    result = session.execute(
        update(JobNode)
        .where(
            JobNode.job_id == membership.job_id,
            JobNode.attempt == membership.attempt,
            JobNode.worker == membership.worker,
            job_holds,
        )
        .values(heartbeat_at=now())
    )
    session.commit()
    return won(result)


def requeue_broken_gangs(*, session: Session, lease_seconds: float) -> list[int]:
    """Running gang jobs one of whose members stopped renewing: requeued (failed once out of attempts), so the
    other members' renewals are refused and they stop their trainers. Returns the ids to enqueue again."""
    cutoff = now() - timedelta(seconds=lease_seconds)
    member_stale: Any = exists().where(
        JobNode.job_id == Job.id, JobNode.attempt == Job.attempt, JobNode.heartbeat_at < cutoff
    )
    broken = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts).where(
            Job.status == JobStatus.running, Job.nodes > 1, member_stale
        )
    ).all()
    requeued: list[int] = []
    for job_id, attempt, max_attempts in broken:
        lost = f"a node of the gang stopped renewing its lease (attempt {attempt} of {max_attempts})"
        where = (Job.id == job_id, Job.status == JobStatus.running, Job.attempt == attempt, member_stale)
        if requeue(
            session=session, job_id=job_id, attempt=attempt, max_attempts=max_attempts, where=where, lost=lost
        ):
            requeued.append(job_id)
    session.commit()
    return requeued


def fail_attempt(*, session: Session, membership: Membership, error: str) -> bool:
    """A member ends the gang's attempt (its trainer failed, its storage is not shared): the job is requeued,
    or failed once out of attempts. Committed. True when it was queued again (the caller enqueues it)."""
    job = session.get(Job, membership.job_id, populate_existing=True)
    if job is None:
        session.rollback()
        return False
    where = (Job.id == job.id, Job.status == JobStatus.running, Job.attempt == membership.attempt)
    lost = f"node {membership.node_rank} ({membership.worker}): {error}"
    queued = requeue(
        session=session,
        job_id=job.id,
        attempt=membership.attempt,
        max_attempts=job.max_attempts,
        where=where,
        lost=lost,
    )
    session.commit()
    return queued
