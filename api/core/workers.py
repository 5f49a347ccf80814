"""The worker registry: each worker process announces itself and renews a heartbeat; the API reads who is alive.

A worker counts as alive while its heartbeat is younger than the lease, the same rule that decides when its
jobs are taken from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, ScalarSelect, bindparam, delete, func, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from api.core.models import Worker
from api.core.state_machine import now
from vit.config import DEFAULT_POOL


def announce(
    *,
    session: Session,
    name: str,
    host: str,
    pid: int,
    address: str | None = None,
    pool: str = DEFAULT_POOL,
    cpus: int = 1,
    devices: Sequence[dict[str, Any]] = (),
    concurrency: int = 1,
    partition: str | None = None,
    memory_mb: int | None = None,
    cpus_per_task: int | None = None,
    memory_per_task_mb: int | None = None,
) -> None:
    """Register (or re-register) a worker: where it runs, where other nodes reach it, its pool and its GPUs (a
    Slurm node of a pool's partition is registered the same way, with its partition, its memory and the pool's
    CPUs and memory per training process)."""
    session.execute(delete(Worker).where(Worker.name == name))
    session.add(
        Worker(
            name=name,
            host=host,
            pid=pid,
            address=address or host,
            pool=pool,
            cpus=cpus,
            devices=list(devices),
            concurrency=concurrency,
            partition=partition,
            memory_mb=memory_mb,
            cpus_per_task=cpus_per_task,
            memory_per_task_mb=memory_per_task_mb,
            started_at=now(),
            heartbeat_at=now(),
        )
    )
    session.commit()


def beat(*, session: Session, name: str, usage: dict[str, Any] | None = None) -> None:
    """Renew the heartbeat, with the host's figures when the worker measured them (schemas.HostUsageOut)."""
    values: dict[str, Any] = {"heartbeat_at": now(), "stopped_at": None}
    if usage is not None:
        values["usage"] = usage
    session.execute(update(Worker).where(Worker.name == name).values(**values))
    session.commit()


def record_peak(*, session: Session, name: str, flops_per_s: float, source: str) -> tuple[float, str]:
    """Keep a worker's calibrated peak: the best rate its host has shown for the same device and threads
    (`source`) in any registered worker, this measurement included; returns that best and its source."""
    host = session.scalar(select(Worker.host).where(Worker.name == name))
    previous = session.scalar(
        select(func.max(Worker.peak_flops)).where(Worker.host == host, Worker.peak_source == source)
    )
    best = max(flops_per_s, previous or 0.0)
    session.execute(update(Worker).where(Worker.name == name).values(peak_flops=best, peak_source=source))
    session.commit()
    return best, source


def retire(*, session: Session, name: str) -> None:
    """A worker shutting down cleanly says so at once, instead of leaving the others to wait out its lease."""
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=now()))
    session.commit()


def _alive(cutoff: Any = None) -> tuple[Any, ...]:
    """The WHERE clause of a live worker: heartbeat at or after `cutoff` (default: the bound `:cutoff`), not
    stopped."""
    if cutoff is None:
        cutoff = bindparam("cutoff", type_=Worker.heartbeat_at.type)
    return (Worker.heartbeat_at >= cutoff, Worker.stopped_at.is_(None))


def live(*, session: Session, lease_seconds: float) -> Sequence[Worker]:
    cutoff = alive_cutoff(lease_seconds)
    return session.scalars(select(Worker).where(*_alive(cutoff)).order_by(Worker.name)).all()


def alive_cutoff(lease_seconds: float) -> datetime:
    """The oldest heartbeat of a worker still alive."""
    return now() - timedelta(seconds=lease_seconds)


def alive_in(pool: Any) -> ScalarSelect[int]:
    """How many workers of `pool` (a bound parameter, or another query's pool column) are alive (heartbeat at
    or after `:cutoff`), as a subquery another read embeds."""
    return select(func.count()).select_from(Worker).where(Worker.pool == pool, *_alive()).scalar_subquery()


def alive_per_pool(*, session: Session, lease_seconds: float) -> dict[str, int]:
    """How many workers of each pool are alive: one grouped query."""
    cutoff = alive_cutoff(lease_seconds)
    rows = session.execute(select(Worker.pool, func.count()).where(*_alive(cutoff)).group_by(Worker.pool))
    return {pool: count for pool, count in rows}


def forget_dead(*, session: Session, older_than_seconds: float) -> None:
    """Drop workers silent for long (a day): the table must not grow with every restart forever."""
    cutoff = now() - timedelta(seconds=older_than_seconds)
    session.execute(delete(Worker).where(Worker.heartbeat_at < cutoff))
    session.commit()


@dataclass(frozen=True)
class Capacity:
    """What a live worker (or a Slurm node `vitq slurm` published) could give one node of a job."""

    devices: list[dict[str, Any]]  # its GPUs; none: a CPU worker
    cpus: int
    memory_mb: int | None
    partition: str | None  # a Slurm node's partition; None: a Celery worker
    cpus_per_task: int | None  # a Slurm pool's per-process CPUs and memory (None: Slurm's default)
    memory_per_task_mb: int | None


# The capacity of pool `:pool`'s live workers: a submit's fit checks, one statement built once, past the ORM.
_CAPACITY_COLUMNS = tuple(getattr(Worker, f.name) for f in fields(Capacity))
_POOL_CAPACITY = select(*_CAPACITY_COLUMNS).where(Worker.pool == bindparam("pool"), *_alive())


def capacity_of_pool(*, session: Session, pool: str, lease_seconds: float) -> list[Capacity]:
    """Each live worker of `pool`: Celery workers, or the Slurm nodes `vitq slurm` published for it."""
    params = {"pool": pool, "cutoff": alive_cutoff(lease_seconds)}
    return [Capacity(*row) for row in session.connection().execute(_POOL_CAPACITY, params)]


class json_rows(FunctionElement[Any]):
    """An aggregate: one JSON array of its arguments per row, all in one JSON array (NULL over no rows)."""

    type = JSON()
    inherit_cache = True
    name = "json_rows"


@compiles(json_rows, "postgresql")
def _json_rows_postgresql(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_rows, "sqlite")
def _json_rows_sqlite(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps JSON as text: json() makes a JSON column's value nested JSON instead of a string.
    args = ", ".join(
        f"json({compiler.process(arg, **kw)})" if isinstance(arg.type, JSON) else compiler.process(arg, **kw)
        for arg in element.clauses
    )
    return f"json_group_array(json_array({args}))"


# The same capacity as one value, for a read that rides on another statement's round trip: a submit's INSERT
# (submit.submit_job) hands it back with the stored row. Binds `:fit_pool` and `:cutoff`.
POOL_CAPACITY_ALONG: ScalarSelect[Any] = (
    select(json_rows(*_CAPACITY_COLUMNS))
    .where(Worker.pool == bindparam("fit_pool"), *_alive())
    .scalar_subquery()
)


def capacity_along(*, pool: str, lease_seconds: float) -> tuple[ScalarSelect[Any], dict[str, Any]]:
    """POOL_CAPACITY_ALONG and its parameters, for state_machine.store's `along`."""
    return POOL_CAPACITY_ALONG, {"fit_pool": pool, "cutoff": alive_cutoff(lease_seconds)}


def capacity_from(along: list[list[Any]] | None) -> list[Capacity]:
    """The capacity POOL_CAPACITY_ALONG handed back."""
    return [Capacity(*row) for row in along or []]


def largest_fit(in_pool: Sequence[Capacity]) -> int | None:
    """The most devices one of these workers has; None when there is none or one is a CPU worker (a CPU worker
    runs any job of its pool, so no GPU count is too large for the pool)."""
    if not in_pool or any(not w.devices for w in in_pool):
        return None
    return max(len(w.devices) for w in in_pool)


def nodes_that_fit(in_pool: Sequence[Capacity], gpus: int) -> int:
    """How many of these workers could each run a node needing `gpus` GPUs (a CPU worker runs any). One worker
    is one node of a multi-node job."""
    return sum(1 for w in in_pool if not w.devices or len(w.devices) >= gpus)
