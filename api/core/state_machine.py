"""The job state machine: every transition of a job, each one function holding its conditional UPDATE.

    (submit) -> queued -> running -> succeeded | failed | cancelled
                  ^          |
                  +----------+  release (retry, warm shutdown) / requeue_stale (the holder stopped renewing)

The legal moves are data: TRANSITIONS below names each one with the states it leaves and the state it enters,
and `move()` builds the only UPDATEs that write a job's status (tests/api/core/test_transitions.py checks that no
other code does). An undeclared move raises; a declared one from a state it does not leave changes no row. The
API and every executor call these same functions. Each UPDATE's WHERE clause states what the caller believes,
so two callers racing for the same job cannot both win, and the caller learns from the row count whether it did.

Transactions: each public function that changes a job is one unit of work and commits it (callers pass a session
with nothing pending); reads and the private helpers never commit or roll back, so a read never ends or expires
its caller's transaction.

Fencing: a claim makes the job's `attempt` one larger; the attempt is the fencing token. Every write a runner
makes while it holds a job (heartbeat, metric rows, checkpoint rows, final state) names its attempt and worker,
and the database refuses it once the job has moved on: `hold()` opens such a write's transaction with a
conditional UPDATE of the job row, which also locks the row until the commit, so the job cannot be requeued
between the check and the write. A stale runner's writes are refused by the database, not by its own care.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import CursorResult, Insert, Row, ScalarSelect, Select, Update, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from api.core.errors import JobNotFoundError, JobStateError
from api.core.models import LOCAL_OWNER, RUNNABLE, Checkpoint, Job, JobStatus
from vit.config import DEFAULT_POOL, JobSpec

FINISHED = tuple(status for status in JobStatus if status.finished)
# (job id, train.steps) -> whether the job's run directory holds its last step's checkpoint (the worker knows)
CompleteOnDisk = Callable[[int, int], bool]


@dataclass(frozen=True)
class Transition:
    sources: tuple[JobStatus, ...]
    target: JobStatus


Q, R = JobStatus.queued, JobStatus.running
TRANSITIONS: dict[str, Transition] = {
    "claim": Transition((Q,), R),  # one worker's claim, or the member that completes a gang
    "cancel_queued": Transition((Q,), JobStatus.cancelled),
    "fail_waiting": Transition((Q,), JobStatus.failed),  # its parent will never succeed
    "fail_unlaunchable": Transition((Q,), JobStatus.failed),  # its executor refused it for good (sbatch)
    "fail_charged": Transition((Q,), JobStatus.failed),  # a handed-back run counted as failed: the last one
    "succeed": Transition((R,), JobStatus.succeeded),
    "fail": Transition((R,), JobStatus.failed),  # the trainer failed for good, or the last attempt was lost
    "cancel_running": Transition((R,), JobStatus.cancelled),
    "prune": Transition((R,), JobStatus.pruned),  # its search's pruner stopped it (api/core/search.py)
    "requeue": Transition((R,), Q),  # a retry, a warm shutdown, a lost lease
}
FINISH = {
    JobStatus.succeeded: "succeed",
    JobStatus.failed: "fail",
    JobStatus.cancelled: "cancel_running",
    JobStatus.pruned: "prune",
}


def move(name: str, *where: Any) -> Update:
    """The UPDATE of a declared transition: true only while the job is in one of its source states (and
    `where`), setting its target state. Add the other columns with .values()."""
    transition = TRANSITIONS.get(name)
    if transition is None:
        raise ValueError(f"undeclared transition {name!r}; declared: {', '.join(TRANSITIONS)}")
    return update(Job).where(*where, Job.status.in_(transition.sources)).values(status=transition.target)


# ------------------------------------------------------------------------------------------------ owners
@dataclass(frozen=True)
class Principal:
    """Who asks (api/server/auth.py): an owner, or an admin, who sees and acts on every owner's jobs."""

    owner: str
    is_admin: bool = False
    # The limits an admin set for this owner, (name, value) pairs read with the token (api/core/limits.py);
    # None: not read (authentication off), so a submit reads them itself.
    own_limits: tuple[tuple[str, int | None], ...] | None = None


OWNER_LOCKS = 0x76697471  # "vitq": the advisory lock space of lock_owner

# Authentication off: every request acts as this one (a person on a laptop owns everything).
LOCAL_ADMIN = Principal(owner=LOCAL_OWNER, is_admin=True)


def lock_owner(*, session: Session, owner: str) -> None:
    """Serialize decisions about one owner's quotas until the transaction ends: on PostgreSQL a transaction
    advisory lock keyed by the owner (READ COMMITTED: a statement after it sees what the previous holder
    committed). SQLite runs one writer at a time and takes no lock here."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(OWNER_LOCKS, func.hashtext(owner))))


def visible_to(principal: Principal) -> tuple[Any, ...]:
    """The WHERE clause of the jobs `principal` may see and act on. Every read and transition the API makes on
    a principal's behalf adds it, so another owner's job is "not found" (404) everywhere, never "forbidden"."""
    return () if principal.is_admin else owned_by(principal.owner)


def owned_by(owner: Any) -> tuple[Any, ...]:
    """The WHERE clause of one owner's jobs: `owner` a name, or a bound parameter in a statement built once."""
    return (Job.owner == owner,)


def visible_rows(principal: Principal, owner_column: Any) -> tuple[Any, ...]:
    """visible_to's rule for the rows of another owned table (sweeps, transfers, webhooks): its owner column."""
    return () if principal.is_admin else (owner_column == principal.owner,)


def may_see(principal: Principal, owner: str) -> bool:
    """visible_to's rule for one row already read (its `owner`): False answers as "not found", never 403."""
    return principal.is_admin or owner == principal.owner


@dataclass(frozen=True)
class Claim:
    """What a runner holds after winning a claim: the job, the attempt (its fencing token) and the spec."""

    job_id: int
    attempt: int
    max_attempts: int
    worker: str
    spec: JobSpec  # resolved, as stored
    parent_job_id: int | None
    devices: tuple[int, ...] = ()  # the GPU indices this attempt holds on its worker (none on a CPU worker)


def now() -> datetime:
    return datetime.now(UTC)


def won(result: Any) -> bool:
    """Whether a conditional UPDATE changed its one row (the caller's belief held)."""
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def waiting_reason(parent_id: int, parent_status: str | None = None) -> str:
    status = f" ({parent_status})" if parent_status else ""
    return f"waiting for job {parent_id}{status} to succeed"


# ------------------------------------------------------------------------------------------------ submit
def submit(
    *,
    session: Session,
    spec: JobSpec,
    max_attempts: int,
    parent: Job | None,
    owner: str = LOCAL_OWNER,
) -> Job:
    """Add a queued job holding the resolved spec (not flushed, not committed): a sweep's or a transfer's
    children, stored together with their parent row. A job whose parent has not finished yet waits (wait_reason)
    until release_waiting_children lets it go. (POST /jobs accepts a cancelled or failed parent only when it kept
    a checkpoint: such a child starts from it at once.)"""
    job = Job(**_new_job(spec, max_attempts, parent, owner, idempotency_key=None, request_hash=None))
    session.add(job)
    return job


# Built once: one job's INSERT, handing back the stored row.
_STORE = insert(Job).returning(*Job.__table__.c)


@lru_cache
def _store_with(read: ScalarSelect[Any]) -> Insert:
    """The INSERT handing back, besides the row, the value of `read` as its `along` column (built once per read)."""
    return _STORE.returning(read.label("along"))


def store(
    *,
    session: Session,
    spec: JobSpec,
    max_attempts: int,
    parent: Job | None,
    owner: str = LOCAL_OWNER,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    along: tuple[ScalarSelect[Any], dict[str, Any]] | None = None,
) -> Row[Any]:
    """submit's job, inserted now in the session's transaction (not committed), as the stored row: POST /jobs'
    path, past the ORM's unit of work, which cost more CPU than the INSERT itself. A second job with the owner's
    `idempotency_key` raises IntegrityError here: the caller rolls back and reads the first one instead.
    `along`: a read (and its parameters) that rides on the INSERT's round trip, its value the row's `along`."""
    values = _new_job(spec, max_attempts, parent, owner, idempotency_key, request_hash)
    if along is None:
        return session.connection().execute(_STORE, values).one()
    read, params = along
    return session.connection().execute(_store_with(read), {**values, **params}).one()


def _new_job(
    spec: JobSpec,
    max_attempts: int,
    parent: Job | None,
    owner: str,
    idempotency_key: str | None,
    request_hash: str | None,
) -> dict[str, Any]:
    """A new queued job's columns."""
    resolved = spec.resolved()
    waits = parent is not None and parent.status not in FINISHED
    return {
        "name": resolved.name,
        "kind": resolved.kind,
        "status": JobStatus.queued,
        "spec": resolved.model_dump(mode="json"),
        "parent_job_id": parent.id if parent is not None else None,
        "max_attempts": max_attempts,
        "total_steps": resolved.train.steps,
        "pool": resolved.resources.pool,
        "priority": resolved.resources.priority,
        "gpus": resolved.resources.gpus_per_node,
        "nodes": resolved.resources.nodes,
        "wait_reason": waiting_reason(parent.id) if waits and parent is not None else None,
        "owner": owner,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
    }


def settle_waiting_job(*, session: Session, job: Job) -> bool:
    """Close the race with a parent finishing while this job was being stored (release_waiting_children may
    have looked before our commit). Call after the commit. True when the job no longer waits: enqueue it."""
    if job.wait_reason is None or job.parent_job_id is None:
        return False
    released = release_waiting_children(session=session, parent_id=job.parent_job_id)
    session.refresh(job)
    return job.id in released


# ------------------------------------------------------------------------------------------------ cancel
def request_cancel(*, session: Session, job_id: int, principal: Principal = LOCAL_ADMIN) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its runner to stop. Committed. A job
    `principal` may not see is not found. The canceller is recorded (the first one, if two race)."""
    mine = (Job.id == job_id, *visible_to(principal))
    by = {"cancelled_by": func.coalesce(Job.cancelled_by, principal.owner)}
    # Two tries: the job may move queued -> running between the two conditional updates.
    for _ in range(2):
        cancelled = session.execute(
            move("cancel_queued", *mine).values(finished_at=now(), wait_reason=None, **by)
        )
        if won(cancelled):
            fail_waiting_children(
                session=session, parent_id=job_id, error=f"parent job {job_id} was cancelled"
            )
            break
        flagged = session.execute(
            update(Job).where(*mine, Job.status == JobStatus.running).values(cancel_requested=True, **by)
        )
        if won(flagged):
            break
        status = session.scalar(select(Job.status).where(*mine))
        if status is None:
            raise JobNotFoundError(job_id)
        if JobStatus(status).finished:
            raise JobStateError(f"job {job_id} is {status}; it cannot be cancelled")
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


# ------------------------------------------------------------------------------------------------ claim
def runnable() -> tuple[Any, ...]:
    """The WHERE clause of a job a worker may claim now (the terms of its partial index, ix_jobs_runnable)."""
    return RUNNABLE


# The order waiting jobs run in: higher priority first, first come first served within a priority.
QUEUE_ORDER = (Job.priority.desc(), Job.created_at, Job.id)


def queue_order(query: Select[Any]) -> Select[Any]:
    return query.order_by(*QUEUE_ORDER)


def fits(*, pool: str, free_devices: Sequence[int] | None) -> tuple[Any, ...]:
    """The WHERE clause of a job a worker of `pool` can start now: a GPU worker (free_devices a list, maybe
    empty) only jobs that fit in its free devices; a CPU worker (None) any job of its pool."""
    clause: tuple[Any, ...] = (Job.pool == pool,)
    return clause if free_devices is None else (*clause, Job.gpus <= len(free_devices))


def owners_at_running_limit(running_limit: int) -> Select[Any]:
    """The owners with `running_limit` jobs running (their queued jobs wait: a quota that delays, not refuses)."""
    running = aliased(Job)
    return (
        select(running.owner)
        .where(running.status == JobStatus.running)
        .group_by(running.owner)
        .having(func.count() >= running_limit)
    )


def claim(
    *,
    session: Session,
    worker: str,
    candidates: int = 5,
    running_limit: int | None = None,
    pool: str = DEFAULT_POOL,
    free_devices: Sequence[int] | None = None,
) -> Claim | None:
    """Move the first runnable queued job in queue order that fits to running for `worker`, skipping owners at
    their `running_limit` (exact: claims of one owner take its lock_owner). A broker message is a wake-up, not
    an assignment: whichever job it names, the claim takes the head of the queue, so jobs run in the order
    their places show; a lost message costs nothing while any other message or poll arrives. On a GPU worker
    the job takes the first of `free_devices` it needs, recorded in the same UPDATE (Claim.devices)."""
    # Multi-node jobs start only as a gang (api/core/gangs.py), never by one worker's claim.
    allowed = (*runnable(), *fits(pool=pool, free_devices=free_devices), Job.nodes == 1)
    if running_limit is not None:
        allowed = (*allowed, Job.owner.not_in(owners_at_running_limit(running_limit)))
    ids = list(session.scalars(queue_order(select(Job.id).where(*allowed)).limit(candidates)))
    session.rollback()  # each candidate is tried in a transaction of its own
    for job_id in ids:
        won = _claim_one(
            session=session,
            job_id=job_id,
            worker=worker,
            allowed=allowed,
            free_devices=free_devices,
            limited=running_limit is not None,
        )
        if won is not None:
            return won
    return None


def _claim_one(
    *,
    session: Session,
    job_id: int,
    worker: str,
    allowed: tuple[Any, ...],
    free_devices: Sequence[int] | None,
    limited: bool,
    placement: dict[str, Any] | None = None,
) -> Claim | None:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status != JobStatus.queued or job.wait_reason or job.cancel_requested:
        session.rollback()
        return None
    if job.parent_job_id is not None and not _parent_ready(session=session, job=job):
        return None
    if limited:  # two claims for one owner's last running slot: the second counts after the first commits
        lock_owner(session=session, owner=job.owner)
    attempt, started = job.attempt + 1, now()
    devices = list(free_devices[: job.gpus]) if free_devices is not None else []
    result = session.execute(
        move("claim", Job.id == job_id, Job.attempt == job.attempt, *allowed).values(
            attempt=attempt,
            worker=worker,
            heartbeat_at=started,
            started_at=job.started_at or started,
            devices=",".join(map(str, devices)) or None,
            **(placement or {}),
        )
    )
    session.commit()
    if not won(result):
        return None
    return Claim(
        job_id=job_id,
        attempt=attempt,
        max_attempts=job.max_attempts,
        worker=worker,
        spec=JobSpec.model_validate(job.spec),
        parent_job_id=job.parent_job_id,
        devices=tuple(devices),
    )


def start_gang(*, session: Session, job_id: int, attempt: int, members: Sequence[str]) -> bool:
    """The member that completes a gang starts its job (api/core/gangs.py): queued at `attempt` - 1 to running
    at `attempt`, held by rank 0's worker, its `members` (workers in rank order) recorded as the job's nodes. Not
    committed: part of the join's transaction."""
    started = now()
    result = session.execute(
        move("claim", Job.id == job_id, Job.attempt == attempt - 1, *runnable()).values(
            attempt=attempt,
            worker=members[0],
            placement=",".join(members),
            heartbeat_at=started,
            started_at=func.coalesce(Job.started_at, started),
        )
    )
    return won(result)


def claim_job(
    *, session: Session, job_id: int, worker: str, executor_ref: str, nodes: Sequence[str]
) -> Claim | None:
    """An executor's launch claims the one job it was made for (a Slurm batch script: `executor_ref` is
    "slurm:<its job id>"): queued -> running, attempt + 1, only while the job is runnable and still names that
    launch. A stale launch (Slurm requeued it after vitq moved the job to another launch, or it starts after the
    job was cancelled or finished) finds nothing to claim. The launch's `nodes` (in node-rank order) are recorded
    as the attempt's placement in the same UPDATE, and the launch's pending note is cleared."""
    allowed = (*runnable(), Job.executor_ref == executor_ref)
    return _claim_one(
        session=session,
        job_id=job_id,
        worker=worker,
        allowed=allowed,
        free_devices=None,
        limited=False,
        placement={"placement": ",".join(nodes), "executor_note": None},
    )


def fail_unlaunchable(*, session: Session, job_id: int, executor_ref: str | None, error: str) -> bool:
    """A queued job its executor refused for good (sbatch: no node of the partition can ever run it) fails with
    the executor's words, unless it was launched meanwhile (`executor_ref` no longer matches). Committed."""
    launch = Job.executor_ref.is_(None) if executor_ref is None else Job.executor_ref == executor_ref
    result = session.execute(
        move("fail_unlaunchable", Job.id == job_id, launch).values(
            error=error, finished_at=now(), executor_note=None
        )
    )
    if won(result):
        fail_waiting_children(session=session, parent_id=job_id, error=f"parent job {job_id} failed: {error}")
    session.commit()
    return won(result)


def charge_attempt(*, session: Session, job_id: int, attempt: int, executor_ref: str, error: str) -> bool:
    """A run that handed its job back at no cost turns out to have failed (its Slurm job was scancelled outside
    vitq): the attempt it gave back counts after all, and the job fails once that was its last. True when the
    job stays queued to run again. Only while the job is still queued at `attempt` for that launch. Committed."""
    where = (Job.id == job_id, Job.attempt == attempt, Job.executor_ref == executor_ref)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        session.rollback()
        return False
    if attempt + 1 >= job.max_attempts:
        result = session.execute(move("fail_charged", *where).values(error=error, finished_at=now()))
        if won(result):
            fail_waiting_children(
                session=session, parent_id=job_id, error=f"parent job {job_id} failed: {error}"
            )
        session.commit()
        return False
    result = session.execute(
        update(Job).where(*where, Job.status == JobStatus.queued).values(attempt=attempt + 1, error=error)
    )
    session.commit()
    return won(result)


def _parent_ready(*, session: Session, job: Job) -> bool:
    """True when the parent succeeded, or stopped (cancelled, failed) after keeping a checkpoint to start from;
    otherwise park the child (parent unfinished) or fail it."""
    parent = session.get(Job, job.parent_job_id)
    assert parent is not None  # a foreign key, and jobs are never deleted
    if parent.status == JobStatus.succeeded or (
        parent.status in FINISHED and _kept_a_checkpoint(session=session, job_id=parent.id)
    ):
        return True
    if parent.status not in FINISHED:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued, Job.wait_reason.is_(None))
            .values(wait_reason=waiting_reason(parent.id, parent.status.value))
        )
    else:
        _fail_orphan(session=session, child_id=job.id, parent=parent)
    session.commit()
    return False


def _kept_a_checkpoint(*, session: Session, job_id: int) -> bool:
    return session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id).limit(1)) is not None


# ------------------------------------------------------------------------------------------------ holding
def held_by(claim: Claim) -> tuple[Any, ...]:
    """The WHERE clause that is true only while `claim` still holds its job (the fence)."""
    return (
        Job.id == claim.job_id,
        Job.status == JobStatus.running,
        Job.worker == claim.worker,
        Job.attempt == claim.attempt,
    )


def hold(*, session: Session, claim: Claim, step: int | None = None) -> bool:
    """Open a fenced write: True (the job row now locked until the commit) while the claim holds the job;
    False (rolled back) once it has moved on. Write, then commit, only after True. `step` moves the progress."""
    values: dict[str, Any] = {"attempt": Job.attempt} if step is None else {"step": step}
    result = session.execute(update(Job).where(*held_by(claim)).values(**values))
    if won(result):
        return True
    session.rollback()
    return False


def renew(*, session: Session, claim: Claim, step: int) -> tuple[bool, bool]:
    """Refresh the lease and the progress in one round trip: (still held, cancel requested). Not held: the
    job was requeued or finished elsewhere, and the caller must stop its trainer at once."""
    flag = session.execute(
        update(Job)
        .where(*held_by(claim))
        .values(heartbeat_at=now(), step=step)
        .returning(Job.cancel_requested)
    ).scalar_one_or_none()
    session.commit()
    return flag is not None, bool(flag)


def record_progress_start(*, session: Session, claim: Claim, resumed_from_step: int | None) -> bool:
    """The attempt's trainer resumed from this step (None: from scratch). Fenced."""
    result = session.execute(
        update(Job)
        .where(*held_by(claim))
        .values(resumed_from_step=resumed_from_step, step=resumed_from_step or 0)
    )
    session.commit()
    return won(result)


def finish(
    *, session: Session, claim: Claim, status: JobStatus, error: str | None = None, step: int | None = None
) -> bool:
    """Record the final state; False when the caller no longer holds the job (nothing is written). A job that
    did not succeed takes its waiting fine-tunes down with it."""
    if status not in FINISHED:
        raise ValueError(f"{status.value} is not a final state")
    values: dict[str, Any] = {
        "error": error,
        "finished_at": now(),
        "wait_reason": None,
        "devices": None,
    }
    if step is not None:
        values["step"] = step
    result = session.execute(move(FINISH[status], *held_by(claim)).values(**values))
    if won(result) and status != JobStatus.succeeded:
        reason = (
            f"parent job {claim.job_id} was {status.value}"
            if status in (JobStatus.cancelled, JobStatus.pruned)
            else f"parent job {claim.job_id} failed" + (f": {error}" if error else "")
        )
        fail_waiting_children(session=session, parent_id=claim.job_id, error=reason)
    session.commit()
    return won(result)


def release(*, session: Session, claim: Claim, error: str | None = None, count_attempt: bool = True) -> bool:
    """Put a held job back to queued (a retry, or a worker shutting down); the next claim resumes it.
    `count_attempt=False` gives the attempt back (a worker shutting down did not fail it: deploys and restarts
    must not use up a job's retries). False when nothing is to be enqueued: the job was lost, or a cancel was
    requested meanwhile (it ends cancelled here, since a queued job with a cancel request never runs)."""
    queued = not _cancel_instead(session=session, where=held_by(claim)) and won(
        session.execute(
            move("requeue", *held_by(claim)).values(
                worker=None,
                heartbeat_at=None,
                error=error,
                attempt=claim.attempt if count_attempt else claim.attempt - 1,
                devices=None,
            )
        )
    )
    session.commit()
    return queued


def _cancel_instead(*, session: Session, where: tuple[Any, ...]) -> bool:
    """End a running job cancelled if its cancel was requested (the caller was about to requeue it). Not
    committed: part of the caller's transition."""
    result = session.execute(
        move("cancel_running", *where, Job.cancel_requested.is_(True)).values(
            worker=None, heartbeat_at=None, finished_at=now(), devices=None
        )
    )
    return won(result)


# ------------------------------------------------------------------------------------------------ recovery
def requeue_stale(
    *,
    session: Session,
    lease_seconds: float,
    complete_on_disk: CompleteOnDisk | None = None,
    ended: list[int] | None = None,
) -> list[int]:
    """Running jobs whose heartbeat is older than the lease belong to runners that stopped renewing: requeue
    them (or fail them once they have used every attempt). A job whose run is complete on disk
    (`complete_on_disk(job_id, total_steps)`: its trainer finished every step, its runner was lost before it
    said so) is queued again with its attempt given back, however many are left: the next claim records the run
    without training (worker/supervisor.py), so finished work costs no attempt. Returns the ids to enqueue; the
    ids of the jobs it ended instead (failed, or cancelled as asked) are added to `ended`."""
    cutoff = now() - timedelta(seconds=lease_seconds)
    stale = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts, Job.worker, Job.total_steps).where(
            Job.status == JobStatus.running, Job.heartbeat_at < cutoff
        )
    ).all()
    requeued: list[int] = []
    for job_id, attempt, max_attempts, worker, total_steps in stale:
        complete = complete_on_disk is not None and complete_on_disk(job_id, total_steps)
        lost = f"worker {worker} stopped renewing its lease (attempt {attempt} of {max_attempts})"
        if complete:
            lost += "; its trainer had finished every step: recorded by the next claim, no attempt used"
        where = (
            Job.id == job_id,
            Job.status == JobStatus.running,
            Job.attempt == attempt,
            Job.heartbeat_at < cutoff,
        )
        if requeue(
            session=session,
            job_id=job_id,
            attempt=attempt,
            max_attempts=max_attempts,
            where=where,
            lost=lost,
            charge=not complete,
        ):
            requeued.append(job_id)
        elif ended is not None and session.scalar(select(Job.status).where(Job.id == job_id)) in FINISHED:
            ended.append(job_id)
    session.commit()
    return requeued


def requeue(
    *,
    session: Session,
    job_id: int,
    attempt: int,
    max_attempts: int,
    where: tuple[Any, ...],
    lost: str,
    charge: bool = True,
) -> bool:
    """A lost running job (`where` still true) back to queued, failed once it used every attempt, cancelled
    if a cancel was requested. True when it was queued again. `charge=False` gives the attempt back, as a
    hand-back does (its cluster took the run away, e.g. a preemption: nothing failed). Not committed: the
    caller commits."""
    if _cancel_instead(session=session, where=where):
        return False
    final = charge and attempt >= max_attempts
    values: dict[str, Any] = {"error": lost, "finished_at": now()} if final else {"error": lost}
    if not charge:
        values["attempt"] = attempt - 1
    result = session.execute(
        move("fail" if final else "requeue", *where).values(
            worker=None, heartbeat_at=None, devices=None, **values
        )
    )
    if won(result) and final:
        fail_waiting_children(session=session, parent_id=job_id, error=f"parent job {job_id} failed: {lost}")
    return won(result) and not final


def release_waiting_children(*, session: Session, parent_id: int | None = None) -> list[int]:
    """Resolve fine-tunes parked on their parent (all of them, or one parent's): released when it succeeded
    (returned, to enqueue), failed when it failed or was cancelled. Committed."""
    query = select(Job.id, Job.parent_job_id).where(
        Job.status == JobStatus.queued, Job.wait_reason.is_not(None), Job.parent_job_id.is_not(None)
    )
    if parent_id is not None:
        query = query.where(Job.parent_job_id == parent_id)
    released: list[int] = []
    for child_id, parent in session.execute(query).all():
        parent_job = session.get(Job, parent)
        assert parent_job is not None  # a foreign key, and jobs are never deleted
        if parent_job.status == JobStatus.succeeded:
            result = session.execute(
                update(Job)
                .where(Job.id == child_id, Job.status == JobStatus.queued, Job.wait_reason.is_not(None))
                .values(wait_reason=None)
            )
            if won(result):
                released.append(child_id)
        elif parent_job.status in FINISHED:
            _fail_orphan(session=session, child_id=child_id, parent=parent_job)
    session.commit()
    return released


def fail_waiting_children(*, session: Session, parent_id: int, error: str) -> None:
    """Jobs waiting on a parent that will never succeed fail now, and so do jobs waiting on them (not
    committed: part of the caller's transition)."""
    pending = [(parent_id, error)]
    while pending:
        parent, reason = pending.pop()
        failed = session.scalars(
            move("fail_waiting", Job.parent_job_id == parent)
            .values(error=reason, wait_reason=None, finished_at=now())
            .returning(Job.id)
        ).all()
        pending += [(child, f"parent job {child} failed: {reason}") for child in failed]


def _fail_orphan(*, session: Session, child_id: int, parent: Job) -> None:
    if parent.status == JobStatus.cancelled:
        error = f"parent job {parent.id} was cancelled"
    else:
        error = f"parent job {parent.id} failed: {parent.error or 'no error recorded'}"
    result = session.execute(
        move("fail_waiting", Job.id == child_id).values(error=error, wait_reason=None, finished_at=now())
    )
    if won(result):
        fail_waiting_children(
            session=session, parent_id=child_id, error=f"parent job {child_id} failed: {error}"
        )


def runnable_count(*, session: Session, pool: str | None = None) -> int:
    """How many jobs a worker (of `pool`) could claim now (the reaper keeps as many wake-ups in the broker)."""
    in_pool = () if pool is None else (Job.pool == pool,)
    return session.scalar(select(func.count()).select_from(Job).where(*runnable(), *in_pool)) or 0
