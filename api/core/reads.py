"""The API's reads: small keyword-only functions over a Session. Routes call these; they never build queries
themselves. Every change of a job's state goes through api.core.state_machine, which the workers call too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, and_, bindparam, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from api.core import workers
from api.core.metric_queries import MetricSummary, summarize_metrics
from api.core.models import MAX_JOB_ID, Checkpoint, Job, JobRecord, JobStatus
from api.core.schemas import JobOut
from api.core.settings import Settings
from api.core.state_machine import (
    QUEUE_ORDER,
    JobNotFoundError,
    Principal,
    owned_by,
    owners_at_running_limit,
    runnable,
    visible_to,
)
from vit.config import DEFAULT_POOL


def get_job(*, session: Session, job_id: int, principal: Principal) -> Job:
    """The job, if `principal` may see it; JobNotFoundError (404) otherwise, whether or not it exists."""
    job = find_job(session=session, job_id=job_id, principal=principal)
    if job is None:
        raise JobNotFoundError(job_id)
    return job


# Built once (every job route reads its job first): the job by id, for an admin and for its owner.
_JOB = select(Job).where(Job.id == bindparam("job_id"))
_OWNED_JOB = _JOB.where(*owned_by(bindparam("owner")))


def find_job(*, session: Session, job_id: int, principal: Principal) -> Job | None:
    if job_id > MAX_JOB_ID:  # no such row (jobs.id is 32-bit), and PostgreSQL would refuse the comparison
        return None
    if principal.is_admin:
        return session.scalar(_JOB, {"job_id": job_id})
    return session.scalar(_OWNED_JOB, {"job_id": job_id, "owner": principal.owner})


def list_jobs(
    *,
    session: Session,
    principal: Principal,
    status: JobStatus | None,
    kind: str | None,
    limit: int,
    offset: int,
    parent: int | None = None,
    name: str | None = None,
    sweep_id: int | None = None,
    lineage_of: int | None = None,
) -> tuple[list[Job], int]:
    """Newest first, and the total number of jobs that match the filters (`name`: a case-blind substring;
    `lineage_of`: that job and every job fine-tuned from it, from those, and so on)."""
    filters: list[Any] = [*visible_to(principal)]
    if status is not None:
        filters.append(Job.status == status)
    if kind is not None:
        filters.append(Job.kind == kind)
    if parent is not None:
        filters.append(Job.parent_job_id == parent)
    if name:
        filters.append(Job.name.ilike(f"%{_escape_like(name)}%", escape="\\"))
    if sweep_id is not None:
        filters.append(Job.sweep_id == sweep_id)
    if lineage_of is not None:
        filters.append(Job.id.in_(select(_lineage(lineage_of).c.id)))
    total = session.scalar(select(func.count()).select_from(Job).where(*filters)) or 0
    rows = session.scalars(
        select(Job).where(*filters).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def _lineage(root: int) -> Any:
    """The ids of `root` and its descendants along parent_job_id: one recursive CTE, inside the list's own
    statements (a lineage filter adds no query)."""
    tree = select(Job.id).where(Job.id == root).cte("lineage", recursive=True)
    return tree.union_all(select(Job.id).where(Job.parent_job_id == tree.c.id))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_checkpoints(*, session: Session, job_id: int, principal: Principal) -> Sequence[Checkpoint]:
    return session.scalars(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.job_id == job_id, *visible_to(principal))
        .order_by(Checkpoint.step, Checkpoint.id)
    ).all()


def find_checkpoint(*, session: Session, job_id: int, name: str, principal: Principal) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.job_id == job_id, Checkpoint.name == name, *visible_to(principal))
    )


# The places a page shows are counted from the head of each pool's queue, read in queue order from its index:
# at most this many ids per pool, so a page costs the same with a hundred jobs queued or a million. A job
# further back is shown as "more than PLACES_COUNTED jobs ahead".
PLACES_COUNTED = 1000


@dataclass(frozen=True)
class QueueView:
    """Where runnable queued jobs stand: their 1-based places in their pool's queue, counted exactly as the
    claim takes jobs (queue order, skipping owners at their running limit), and the live workers per pool."""

    places: dict[int, int]
    workers_alive: dict[str, int]
    owners_at_limit: frozenset[str] = frozenset()
    running_limit: int | None = None

    def reason(self, job: JobRecord) -> str | None:
        """Why a queued job has not started (its own wait_reason first: e.g. a parent that has not finished)."""
        if job.status != JobStatus.queued or job.wait_reason is not None:
            return job.wait_reason
        if job.executor_note:  # the executor's own word: Slurm's reason, with the Slurm job id
            return job.executor_note
        if job.owner in self.owners_at_limit:
            return f"waiting: its owner has {self.running_limit} jobs running (max_running_jobs)"
        if not self.workers_alive.get(job.pool):
            pool = "" if job.pool == DEFAULT_POOL else f" of pool {job.pool}"
            return f"no worker{pool} is running: start one (vitq worker) and it will pick this job up"
        place = self.places.get(job.id)
        if place is None:
            return f"waiting for a free worker (more than {PLACES_COUNTED:,} jobs ahead)"
        ahead = place - 1
        return f"waiting for a free worker ({ahead} job{'s' if ahead != 1 else ''} ahead)"


def queue_view(
    *, session: Session, jobs: Sequence[Job], lease_seconds: float, running_limit: int | None = None
) -> QueueView | None:
    """The places of the page's runnable queued jobs and the live workers of their pools (only when the page
    shows such a job). One job: its place and its pool's workers in one statement, built once (the job page
    reads them with the job instead: job_page). A page: one query per pool, numbering at most PLACES_COUNTED
    ids of the queue's index, and one for the live workers."""
    waiting = [job for job in jobs if job.status == JobStatus.queued and job.wait_reason is None]
    if not waiting:
        return None
    at_limit: frozenset[str] = frozenset()
    skip: tuple[Any, ...] = ()
    if running_limit is not None:
        at_limit = frozenset(session.scalars(owners_at_running_limit(running_limit)))
        skip = (Job.owner.not_in(at_limit),) if at_limit else ()
    if len(waiting) == 1 and not skip:
        places, alive = _place_and_workers(session=session, job=waiting[0], lease_seconds=lease_seconds)
        return QueueView(places, alive, at_limit, running_limit)
    places = (
        _place_of(session=session, job=waiting[0], skip=skip)
        if len(waiting) == 1
        else _places_in(session=session, jobs=waiting, skip=skip)
    )
    alive = workers.alive_per_pool(session=session, lease_seconds=lease_seconds)
    return QueueView(places, alive, at_limit, running_limit)


def _ahead_of(priority: Any, created_at: Any, job_id: Any) -> Any:
    """The WHERE clause of the jobs before a job with these values in QUEUE_ORDER (priority descending, then
    first come): the job's own values, or bound parameters."""
    return or_(
        Job.priority > priority,
        and_(
            Job.priority == priority,
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)),
        ),
    )


def _ahead_count(
    pool: Any, priority: Any, created_at: Any, job_id: Any, skip: tuple[Any, ...] = ()
) -> ScalarSelect[int]:
    """How many runnable jobs (less `skip`) are ahead of a job with these values, counted up to PLACES_COUNTED
    from its pool's queue index, as a subquery: the values are the job's own, bound parameters, or the columns of
    the job an outer query reads."""
    ahead = (
        select(Job.id)
        .where(*runnable(), Job.pool == pool, *skip, _ahead_of(priority, created_at, job_id))
        .correlate_except(Job)  # an outer query's job, read in a subquery of its FROM: no table of its own
    )
    return select(func.count()).select_from(ahead.limit(PLACES_COUNTED).subquery()).scalar_subquery()


_PLACE_AND_WORKERS = select(
    _ahead_count(
        bindparam("pool"),
        bindparam("priority", type_=Job.priority.type),
        bindparam("created_at", type_=Job.created_at.type),
        bindparam("job_id", type_=Job.id.type),
    ),
    workers.alive_in(bindparam("pool")),
)


def _place_and_workers(
    *, session: Session, job: Job, lease_seconds: float
) -> tuple[dict[int, int], dict[str, int]]:
    params = {
        "pool": job.pool,
        "priority": job.priority,
        "created_at": job.created_at,
        "job_id": job.id,
        "cutoff": workers.alive_cutoff(lease_seconds),
    }
    ahead, alive = session.connection().execute(_PLACE_AND_WORKERS, params).one()  # plain values: no ORM
    return _place(job.id, ahead), {job.pool: alive}


def _place(job_id: int, ahead: int) -> dict[int, int]:
    return {job_id: ahead + 1} if ahead < PLACES_COUNTED else {}


# GET /jobs/{id}, the hottest read, in one statement: the job, and when it waits in its queue (queued, no
# wait_reason of its own), how many jobs are ahead of it and how many workers of its pool are alive.
_PAGE = aliased(Job, name="page")
_PAGE_WAITS = and_(_PAGE.status == JobStatus.queued, _PAGE.wait_reason.is_(None))
_JOB_PAGE = select(
    _PAGE,
    case((_PAGE_WAITS, _ahead_count(_PAGE.pool, _PAGE.priority, _PAGE.created_at, _PAGE.id))).label("ahead"),
    case((_PAGE_WAITS, workers.alive_in(_PAGE.pool))).label("alive"),
).where(_PAGE.id == bindparam("job_id"))
_OWNED_JOB_PAGE = _JOB_PAGE.where(_PAGE.owner == bindparam("owner"))


def job_page(*, session: Session, job_id: int, principal: Principal, settings: Settings) -> JobOut:
    """One job as shown() shows it (404 as get_job), its place read along with its row. Under a running limit,
    the owners at the limit are read first, as shown() does."""
    if settings.max_running_jobs is not None:
        (out,) = shown(
            session=session,
            jobs=[get_job(session=session, job_id=job_id, principal=principal)],
            settings=settings,
        )
        return out
    params: dict[str, Any] = {"job_id": job_id, "cutoff": workers.alive_cutoff(settings.lease_seconds)}
    statement = _JOB_PAGE
    if not principal.is_admin:
        statement, params["owner"] = _OWNED_JOB_PAGE, principal.owner
    row = session.execute(statement, params).one_or_none() if job_id <= MAX_JOB_ID else None
    if row is None:
        raise JobNotFoundError(job_id)
    job, ahead, alive = row
    queue = None if ahead is None else QueueView(_place(job.id, ahead), {job.pool: alive})
    summary = summarize_metrics(session=session, job_ids=[job.id]).get(job.id) if job.started_at else None
    return job_out(job, summary, queue)


def _place_of(*, session: Session, job: Job, skip: tuple[Any, ...]) -> dict[int, int]:
    """One job's page, some owners skipped: the jobs ahead of it counted in the database (one row back)."""
    ahead = session.scalar(select(_ahead_count(job.pool, job.priority, job.created_at, job.id, skip))) or 0
    return _place(job.id, ahead)


def _places_in(*, session: Session, jobs: Sequence[Job], skip: tuple[Any, ...]) -> dict[int, int]:
    """A list page: each pool's head numbered in queue order in the database, of which only the page's jobs come
    back (not the head's PLACES_COUNTED ids, which made a page cost ten times as much with a thousand jobs
    queued as with a hundred)."""
    places: dict[int, int] = {}
    for pool in sorted({job.pool for job in jobs}):
        head = (
            select(Job.id, func.row_number().over(order_by=QUEUE_ORDER).label("place"))
            .where(*runnable(), Job.pool == pool, *skip)
            .order_by(*QUEUE_ORDER)
            .limit(PLACES_COUNTED)
            .subquery()
        )
        page = [job.id for job in jobs if job.pool == pool]
        rows = session.execute(select(head.c.id, head.c.place).where(head.c.id.in_(page)))
        places.update({job_id: place for job_id, place in rows})
    return places


def job_out(job: JobRecord, summary: MetricSummary | None = None, queue: QueueView | None = None) -> JobOut:
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
        progress=min(job.step / job.total_steps, 1.0)
        if job.total_steps
        else float(job.status == JobStatus.succeeded),  # a probe (train.steps 0) has nothing to count
        resumed_from_step=job.resumed_from_step,
        wait_reason=queue.reason(job) if queue is not None else job.wait_reason or _executor_note(job),
        queue_position=queue.places.get(job.id) if queue is not None else None,
        cancel_requested=job.cancel_requested,
        error=job.error,
        worker=job.worker,
        nodes=_nodes(job),
        executor_ref=job.executor_ref,
        devices=[int(d) for d in (job.devices or "").split(",") if d],
        parent_job_id=job.parent_job_id,
        sweep_id=job.sweep_id,
        owner=job.owner,
        cancelled_by=job.cancelled_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        spec=job.spec,
        latest_metrics=summary.latest,
        best_val_top1=summary.best_val_top1,
        images_per_s=summary.images_per_s,
        eta_seconds=eta,
        tags=job.tags or [],
        notes=job.notes,
    )


def _nodes(job: JobRecord) -> list[str]:
    """The attempt's nodes as its executor recorded them, else the one worker that holds it; none while queued."""
    if job.status == JobStatus.queued:
        return []
    if job.placement:
        return job.placement.split(",")
    return [job.worker] if job.worker else []


def _executor_note(job: JobRecord) -> str | None:
    return job.executor_note if job.status == JobStatus.queued else None


def jobs_out(
    *,
    session: Session,
    jobs: Sequence[Job],
    lease_seconds: float | None = None,
    running_limit: int | None = None,
) -> list[JobOut]:
    """The jobs as the API shows them; with `lease_seconds`, queued jobs say their place and why they wait
    (those whose owner is at `running_limit` say so instead)."""
    # A job that never started has no metrics: a queued page asks nothing for it.
    started = [job.id for job in jobs if job.started_at is not None]
    summaries = summarize_metrics(session=session, job_ids=started)
    queue = (
        queue_view(session=session, jobs=jobs, lease_seconds=lease_seconds, running_limit=running_limit)
        if lease_seconds
        else None
    )
    return [job_out(job, summaries.get(job.id), queue) for job in jobs]


def shown(*, session: Session, jobs: Sequence[Job], settings: Settings) -> list[JobOut]:
    """The jobs as GET /jobs and GET /jobs/{id} show them: queued ones with their place and why they wait, under
    the service's lease and running limit."""
    return jobs_out(
        session=session,
        jobs=jobs,
        lease_seconds=settings.lease_seconds,
        running_limit=settings.max_running_jobs,
    )
