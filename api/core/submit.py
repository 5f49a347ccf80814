"""Submitting work, the one use case POST /jobs, POST /sweeps and POST /transfers share: check each spec as the
service will run it (within the owner's job-size limits, paths confined, parent usable, a worker that fits,
quotas), store the jobs in one transaction, commit, and
only then wake the executors (a worker must find the job it is handed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.core import idempotency, limits, quotas, reads, search, state_machine, sweeps, transfers, workers
from api.core.broker import JobQueue
from api.core.errors import InvalidInputError, invalid
from api.core.models import Job, JobRecord, JobStatus, Sweep, Transfer
from api.core.settings import Settings
from api.core.spec_input import check_spec, confine_paths
from api.core.state_machine import Principal
from api.core.sweep_spec import Point, SweepSpec, SweepSpecError, child_spec, points, probe_points
from api.core.transfer_spec import Child, TransferSpec, TransferSpecError, children, labels
from vit.config import JobSpec, ResourcesSpec, SlurmSpec


def submit_job(
    *,
    session: Session,
    queue: JobQueue,
    settings: Settings,
    principal: Principal,
    spec: JobSpec,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, bool]:
    """The stored job and whether it is new (False: the first job this owner made with `idempotency_key`)."""
    request_hash = idempotency.spec_hash(spec) if idempotency_key is not None else None
    if idempotency_key is not None and request_hash is not None:
        first = idempotency.first_job(
            session=session, owner=principal.owner, key=idempotency_key, request_hash=request_hash
        )
        if first is not None:
            return first, False
    own = limits.for_principal(session=session, principal=principal, settings=settings)
    spec, parent = checked(
        spec, session=session, settings=settings, principal=principal, allowed=own, fit_read=False
    )
    # The quota check takes the owner's lock, held until this transaction commits: nothing rolls back before.
    quotas.check(session=session, owner=principal.owner, specs=[spec], settings=settings)
    try:
        # The fit check's read rides on the INSERT's round trip; a job that does not fit is a 422, and the
        # caller's session rolls its row back.
        stored = state_machine.store(
            session=session,
            spec=spec,
            max_attempts=settings.max_attempts,
            parent=parent,
            owner=principal.owner,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            along=workers.capacity_along(pool=spec.resources.pool, lease_seconds=settings.lease_seconds),
        )
        _check_fits(spec, workers.capacity_from(stored.along))
        session.commit()
    except IntegrityError:
        if idempotency_key is None or request_hash is None:
            raise
        session.rollback()  # another request with this key committed first: answer with its job
        first = idempotency.first_job(
            session=session, owner=principal.owner, key=idempotency_key, request_hash=request_hash
        )
        if first is None:
            raise
        return first, False
    if (
        stored.wait_reason is not None
    ):  # its parent may have finished meanwhile: settle, and answer as it is now
        job = session.get_one(Job, stored.id)
        _wake(session=session, queue=queue, jobs=[job])
        return job, True
    queue.enqueue(stored.id, stored.pool)
    return stored, True


def submit_sweep(
    *, session: Session, queue: JobQueue, settings: Settings, principal: Principal, sweep: SweepSpec
) -> Sweep:
    """The sweep and every child, all stored or none: the first bad child is a 422 that names it. A search:
    the children at its space's edges are checked instead, and the first `parallel` asked for after the commit
    (api/core/search.py; should that fail, the next reaper pass asks)."""
    children = _children(sweep, session=session, settings=settings, principal=principal)
    if sweep.searching:
        first = [children[i % len(children)][0] for i in range(sweep.slots)]  # the children asked for now
        quotas.check(session=session, owner=principal.owner, specs=first, settings=settings)
        row, _ = sweeps.create_sweep(
            session=session,
            sweep=sweep,
            children=[],
            max_attempts=settings.max_attempts,
            owner=principal.owner,
        )
        session.commit()
        asked = search.top_up(
            sessions=sessionmaker(session.get_bind(), expire_on_commit=False),
            url=settings.resolved_database_url,
            sweep_id=row.id,
            max_attempts=settings.max_attempts,
            settings=settings,
        )
        for job_id, pool in asked:
            queue.enqueue(job_id, pool)
        session.refresh(row)
        return row
    quotas.check(
        session=session, owner=principal.owner, specs=[spec for spec, _ in children], settings=settings
    )
    row, made = sweeps.create_sweep(
        session=session,
        sweep=sweep,
        children=children,
        max_attempts=settings.max_attempts,
        owner=principal.owner,
    )
    session.commit()
    _wake(session=session, queue=queue, jobs=made)
    return row


def submit_transfer(
    *, session: Session, queue: JobQueue, settings: Settings, principal: Principal, transfer: TransferSpec
) -> Transfer:
    """The transfer and its children (a probe and/or a fine-tune per dataset), all stored or none: the first bad
    child is a 422 placed on the part of the request that made it (a dataset, the source, base or finetune)."""
    made = []
    own = limits.for_principal(session=session, principal=principal, settings=settings)
    for child in _transfer_children(transfer, session=session, principal=principal):
        try:
            spec, parent = checked(
                check_spec(child.spec), session=session, settings=settings, principal=principal, allowed=own
            )
        except InvalidInputError as error:
            raise _blame_transfer_child(error, transfer, child) from None
        made.append((child, spec, parent))
    quotas.check(
        session=session, owner=principal.owner, specs=[spec for _, spec, _ in made], settings=settings
    )
    jobs = [
        (
            child,
            state_machine.submit(
                session=session,
                spec=spec,
                max_attempts=settings.max_attempts,
                parent=parent,
                owner=principal.owner,
            ),
        )
        for child, spec, parent in made
    ]
    row = transfers.create_transfer(session=session, transfer=transfer, children=jobs, owner=principal.owner)
    session.commit()
    _wake(session=session, queue=queue, jobs=[job for _, job in jobs])
    return row


def _transfer_children(transfer: TransferSpec, *, session: Session, principal: Principal) -> list[Child]:
    """The children's specs; with from_job, each takes the source job's model (base.model goes over it)."""
    source_model = None
    if transfer.source.from_job is not None:
        source = reads.find_job(session=session, job_id=transfer.source.from_job, principal=principal)
        if source is None:  # another owner's job "does not exist" either
            raise invalid(
                ("source", "from_job"), f"job {transfer.source.from_job} does not exist", "job_not_found"
            )
        source_model = source.spec.get("model")
    try:
        return children(transfer, source_model)
    except TransferSpecError as error:
        raise invalid(error.loc, str(error), "transfer_invalid") from None


def _blame_transfer_child(
    error: InvalidInputError, transfer: TransferSpec, child: Child
) -> InvalidInputError:
    """A child's 422 on the request's part that set the failing field: its dataset (data), the source (init),
    finetune (a fine-tune's field finetune sets) or base (anything else)."""
    label = labels(transfer)[child.row]
    details = []
    for detail in error.details:
        loc = tuple(detail["loc"])[1:]  # without "body"
        head = loc[0] if loc else None
        if head == "data":
            where: tuple[str | int, ...] = ("datasets", child.row, *loc[1:])
        elif head == "init":
            where = ("source", *loc[1:])
        elif child.role == "finetune" and _sets(transfer.finetune or {}, loc):
            where = ("finetune", *loc)
        else:
            where = ("base", *loc)
        details.append({**detail, "loc": ("body", *where), "msg": f"{label} {child.role}: {detail['msg']}"})
    return InvalidInputError(details)


def _sets(fields: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether `fields` sets the value at `loc` (or a section holding it)."""
    node: Any = fields
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(loc)


def checked(
    spec: JobSpec,
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    allowed: limits.JobLimits,
    fit_read: bool = True,
) -> tuple[JobSpec, Job | None]:
    """The spec as it will run (paths resolved and confined) and its parent job, or a 422. `fit_read` False:
    the caller checks the fit itself, with a capacity it read along with another statement."""
    limits.check(spec, allowed)
    spec = confine_paths(spec, settings, may_read_job=_may_read_job(session, principal))
    parent = _parent_of(spec, session=session, principal=principal)
    if fit_read:
        in_pool = workers.capacity_of_pool(
            session=session, pool=spec.resources.pool, lease_seconds=settings.lease_seconds
        )
        _check_fits(spec, in_pool)
    return spec, parent


def _wake(*, session: Session, queue: JobQueue, jobs: Sequence[Job]) -> None:
    for job in jobs:
        if job.wait_reason is None or state_machine.settle_waiting_job(session=session, job=job):
            queue.enqueue(job.id, job.pool)


def _children(
    sweep: SweepSpec, *, session: Session, settings: Settings, principal: Principal
) -> list[tuple[JobSpec, Job | None]]:
    try:
        grid = probe_points(sweep) if sweep.searching else points(sweep)
    except SweepSpecError as error:
        raise invalid(error.loc, str(error), "sweep_invalid") from None
    own = limits.for_principal(session=session, principal=principal, settings=settings)
    children = []
    for index, point in enumerate(grid):
        try:
            spec = check_spec(child_spec(sweep, point))
            children.append(
                checked(spec, session=session, settings=settings, principal=principal, allowed=own)
            )
        except SweepSpecError as error:
            raise invalid(error.loc, str(error), "sweep_invalid") from None
        except InvalidInputError as error:
            which = "a child at the space's edge" if sweep.searching else f"job {index + 1} of {len(grid)}"
            raise _blame_child(error, sweep, point, which) from None
    return children


def _blame_child(error: InvalidInputError, sweep: SweepSpec, point: Point, which: str) -> InvalidInputError:
    """A child's 422, placed on the swept field when that is what failed, else on the base spec."""
    values = ", ".join(f"{path}={value!r}" for path, value in point.items())
    details = []
    for detail in error.details:
        loc = tuple(detail["loc"])[1:]  # without "body"
        swept = next((p for p in point if loc[: len(p.split("."))] == tuple(p.split("."))), None)
        where = (*sweep.space_loc, swept) if swept is not None else ("base", *loc)
        details.append({**detail, "loc": ("body", *where), "msg": f"{which} ({values}): {detail['msg']}"})
    return InvalidInputError(details)


def _check_fits(spec: JobSpec, in_pool: Sequence[workers.Capacity]) -> None:
    """A job that no live worker of its pool (`in_pool`) could ever run is a 422 naming the largest fit. With no
    worker of the pool alive yet, it is accepted and waits (its wait_reason says so)."""
    resources = spec.resources
    if not in_pool:
        return
    fit = workers.largest_fit(in_pool)
    if fit is not None and resources.gpus_per_node > fit:
        raise invalid(
            ("resources", "procs_per_node"),
            f"needs {resources.gpus_per_node} GPUs on one node; the largest worker of pool {resources.pool!r} has "
            f"{fit}: at most procs_per_node {fit}",
            "does_not_fit",
        )
    nodes = workers.nodes_that_fit(in_pool, resources.gpus_per_node)
    if resources.nodes > nodes:
        raise invalid(
            ("resources", "nodes"),
            f"needs {resources.nodes} nodes (one worker each); pool {resources.pool!r} has {nodes} live "
            f"workers that fit a node of it: at most nodes {nodes}",
            "does_not_fit",
        )
    slurm_nodes = [w for w in in_pool if w.partition is not None]
    if slurm_nodes:
        _check_slurm_fits(resources, slurm_nodes)


def _check_slurm_fits(resources: ResourcesSpec, nodes: Sequence[workers.Capacity]) -> None:
    """A Slurm pool's job needs, on each node, its processes times the CPUs and memory per process (its
    resources.slurm's, else the pool's): a 422 when no node of the partition has that many (on the field that
    asked for them), or fewer such nodes than the job has."""
    slurm, procs = resources.slurm or SlurmSpec(), resources.procs_per_node
    partition = f"partition {nodes[0].partition!r} (pool {resources.pool!r})"

    def need(node: workers.Capacity) -> tuple[int, int | None]:
        cpus, memory = slurm.per_task(cpus=node.cpus_per_task, memory_mb=node.memory_per_task_mb)
        return procs * (cpus or 1), procs * memory if memory else None

    def has_cpus(node: workers.Capacity) -> bool:
        return node.cpus >= need(node)[0]

    def has_memory(node: workers.Capacity) -> bool:
        memory = need(node)[1]
        return memory is None or node.memory_mb is None or node.memory_mb >= memory

    if not any(has_cpus(node) for node in nodes):
        largest = max(nodes, key=lambda node: node.cpus)
        field = "cpus_per_task" if slurm.cpus_per_task else "procs_per_node"
        raise invalid(
            ("resources", "slurm", field) if slurm.cpus_per_task else ("resources", field),
            f"needs {need(largest)[0]} CPUs on one node ({procs} processes x {need(largest)[0] // procs} CPUs); "
            f"the largest node of {partition} has {largest.cpus}",
            "does_not_fit",
        )
    if not any(has_memory(node) for node in nodes):
        largest = max(nodes, key=lambda node: node.memory_mb or 0)
        field = "mem_per_task" if slurm.mem_per_task else "procs_per_node"
        raise invalid(
            ("resources", "slurm", field) if slurm.mem_per_task else ("resources", field),
            f"needs {need(largest)[1]} MB of memory on one node ({procs} processes x "
            f"{(need(largest)[1] or 0) // procs} MB); the largest node of {partition} has {largest.memory_mb} MB",
            "does_not_fit",
        )
    room = sum(1 for node in nodes if has_cpus(node) and has_memory(node))
    if resources.nodes > room:
        raise invalid(
            ("resources", "nodes"),
            f"needs {resources.nodes} nodes; {partition} has {room} with room for one node of it: at most "
            f"nodes {room}",
            "does_not_fit",
        )


def _may_read_job(session: Session, principal: Principal) -> Callable[[int], bool] | None:
    """confine_paths' owner rule: which jobs' run directories `principal` may start from (None: any)."""
    if principal.is_admin:
        return None
    return lambda job_id: reads.find_job(session=session, job_id=job_id, principal=principal) is not None


def _parent_of(spec: JobSpec, *, session: Session, principal: Principal) -> Job | None:
    if spec.init is None or spec.init.from_job is None:
        return None
    parent_id = spec.init.from_job
    # Another owner's job "does not exist" either: its existence does not leak.
    parent = reads.find_job(session=session, job_id=parent_id, principal=principal)
    if parent is None:
        raise invalid(("init", "from_job"), f"job {parent_id} does not exist", "job_not_found")
    wanted = spec.init.checkpoint
    if JobStatus(parent.status).finished:
        # A finished job's checkpoints are final: a name it never saved can only fail later, in the worker. A
        # cancelled or failed job is a fine starting point when it kept a checkpoint (a stopped long pretrain).
        names = [
            c.name for c in reads.list_checkpoints(session=session, job_id=parent_id, principal=principal)
        ]
        if not names and parent.status != JobStatus.succeeded:
            raise invalid(
                ("init", "from_job"),
                f"job {parent_id} is {parent.status} and kept no checkpoint to start from",
                "job_not_usable",
            )
        if wanted is not None and wanted not in names:
            raise invalid(
                ("init", "checkpoint"),
                f"job {parent_id} has no checkpoint {wanted!r}; it has {', '.join(names) or 'none'}",
                "checkpoint_not_found",
            )
    return parent
