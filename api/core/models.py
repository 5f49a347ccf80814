"""SQLAlchemy tables: the job's record of truth (not Celery's result backend)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Text,
    UniqueConstraint,
    and_,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vit.config import DEFAULT_POOL

# The largest id SQLite's INTEGER and PostgreSQL's bigint hold (SQLite's driver cannot even send a larger one).
MAX_ID = 2**63 - 1
# Job ids are 32-bit INTEGER columns (jobs.id and every column that refers to a job): a larger id names no job,
# and PostgreSQL refuses to compare it with them.
MAX_JOB_ID = 2**31 - 1
# The owner of jobs made with authentication off, and of every job made before owners existed.
LOCAL_OWNER = "local"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"  # stopped early by its sweep's pruner (api/core/search.py); it kept its checkpoints

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.pruned)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=16), default=JobStatus.queued
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved: every default filled in
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id"), default=None, index=True)
    # A searching sweep's child: the number of the Optuna trial it runs (unique per sweep: asked once).
    trial: Mapped[int | None] = mapped_column(Integer, default=None)
    # False until its end was handed to the webhooks (api/core/notify.py): the final state's own row is the
    # outbox entry, so the notification is committed with the state itself.
    notified: Mapped[bool] = mapped_column(default=False, server_default=false())
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # 0 until first claimed
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, default=None)
    # Scheduling (from spec.resources): which workers may run it, in what order, and how many devices a node.
    pool: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_POOL)
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    gpus: Mapped[int] = mapped_column(Integer, server_default="0")
    nodes: Mapped[int] = mapped_column(
        Integer, server_default="1"
    )  # > 1: started by a gang (api/core/gangs.py)
    devices: Mapped[str | None] = mapped_column(String(255), default=None)  # the attempt's, e.g. "0,1"
    wait_reason: Mapped[str | None] = mapped_column(Text, default=None)  # why a queued job has not started
    # Executors other than Celery (worker/slurm): what launched the attempt ("slurm:1234", the fence of its
    # claim), the executor's word on a pending launch (Slurm's reason), the attempt's nodes ("n1,n2").
    executor_ref: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    executor_note: Mapped[str | None] = mapped_column(Text, default=None)
    placement: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Tenancy (api/principal.py): who created the job (jobs made before tokens existed belong to "local"), who
    # cancelled it, and the submitter's Idempotency-Key with a hash of the spec it came with.
    owner: Mapped[str] = mapped_column(String(64), server_default=LOCAL_OWNER)
    cancelled_by: Mapped[str | None] = mapped_column(String(64), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # The owner's labels and free text (PATCH /jobs/{id}, api/core/job_notes.py).
    tags: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    notes: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        # In queue order (api/core/state_machine.QUEUE_ORDER): the head of a pool's queue is read from the index.
        Index("ix_jobs_queue", "status", "pool", text("priority DESC"), "created_at", "id"),
        Index("ix_jobs_kind_created", "kind", "created_at"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        # Decides between concurrent submits with one key: the second INSERT fails, and reads the first job.
        Index("ux_jobs_owner_idempotency_key", "owner", "idempotency_key", unique=True),
        Index("ux_jobs_sweep_trial", "sweep_id", "trial", unique=True),
        Index("ix_jobs_notified_status", "notified", "status"),
    )


# The jobs a worker may claim now (api/core/state_machine.runnable). Their index below is partial, and the queries
# name its terms as they are written here, with the state as a literal, not a bound parameter: a prepared
# statement's generic plan (PostgreSQL) and SQLite's planner can use a partial index only when its terms are
# visibly in the query.
RUNNABLE = (
    Job.status == literal_column(f"'{JobStatus.queued.value}'"),
    Job.wait_reason.is_(None),
    Job.cancel_requested.is_(False),
)
# The runnable jobs of each pool in queue order, and nothing else: a claim, a queued job's place and the reaper's
# count read only these entries, without visiting the table for each one.
Index(
    "ix_jobs_runnable",
    Job.pool,
    Job.priority.desc(),
    Job.created_at,
    Job.id,
    postgresql_where=and_(*RUNNABLE),
    sqlite_where=and_(*RUNNABLE),
)

# A job as the ORM loads it, or as the row a Core statement hands back (POST /jobs' INSERT ... RETURNING): the
# same columns by the same names, which is all a reader of a job needs.
JobRecord: TypeAlias = Job | Row[Any]


class MetricPoint(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)  # unix seconds, as the trainer wrote it

    __table_args__ = (
        # Covering on PostgreSQL: downsampling reads a whole series from the index alone (no heap visits).
        Index("ix_metric_points_job_name_step", "job_id", "name", "step", postgresql_include=["value", "id"]),
        # The API's `since` cursor: a poll reads only the points newer than the last one it saw.
        Index("ix_metric_points_job_id_id", "job_id", "id"),
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))  # e.g. step-000200, a directory under RUN_DIR/checkpoints
    step: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # of model.safetensors
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ux_checkpoints_job_name", "job_id", "name", unique=True),)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is stored (the token itself is shown once, when created)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(default=False)
    token_hash: Mapped[str] = mapped_column(String(64))  # hex sha256
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ux_api_tokens_token_hash", "token_hash", unique=True),)


class OwnerLimit(Base):
    """An admin's override of one job-size limit for one owner (api/core/limits.py); `value` None: no limit for
    this owner, whatever the service's default."""

    __tablename__ = "owner_limits"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # a limit's name, e.g. max_job_params
    value: Mapped[int | None] = mapped_column(BigInteger, default=None)


class Worker(Base):
    """A worker process that announced itself; alive while its heartbeat is younger than the lease."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as jobs.worker names it
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(255))  # where other nodes reach it (VITQ_ADVERTISE_ADDRESS)
    pool: Mapped[str] = mapped_column(String(64))
    cpus: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"index", "name", "memory_mb"}], GPUs
    concurrency: Mapped[int] = mapped_column(Integer)  # jobs it runs at once
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The MFU denominator its trainers get: the best rate its host has shown for this device (worker/peak.py).
    peak_flops: Mapped[float | None] = mapped_column(Float, default=None)
    peak_source: Mapped[str | None] = mapped_column(Text, default=None)
    # A Slurm node of a pool's partition, published by `vitq slurm` (worker/slurm); None: a Celery worker.
    partition: Mapped[str | None] = mapped_column(String(64), default=None)
    # The host's CPU, memory and GPUs at the last heartbeat (schemas.HostUsageOut's shape; worker/usage.py).
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)  # what a job may ask of it (Slurm's)
    # A Slurm pool's CPUs and memory per training process (a job's resources.slurm wins); None: Slurm's default.
    cpus_per_task: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_per_task_mb: Mapped[int | None] = mapped_column(Integer, default=None)


class JobNode(Base):
    """A worker's place in a multi-node job's gang for one attempt (api/core/gangs.py): its node rank, its address,
    and a heartbeat. The unique (job, attempt, rank) lets two workers never take one rank."""

    __tablename__ = "job_nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)  # the attempt the gang runs (the job's fencing token)
    node_rank: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))  # the worker's advertised address
    port: Mapped[int | None] = mapped_column(Integer, default=None)  # rank 0: the rendezvous port it chose
    devices: Mapped[str | None] = mapped_column(String(255), default=None)  # on that node, e.g. "0,1"
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "node_rank", name="ux_job_nodes_rank"),
        UniqueConstraint("job_id", "attempt", "worker", name="ux_job_nodes_worker"),
    )


class Sweep(Base):
    """A set of jobs made from one base spec and a grid or random space over its fields (api/core/sweeps.py)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as validated: base, and grid or random
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    owner: Mapped[str] = mapped_column(String(64), server_default=LOCAL_OWNER)  # owns every child, too
    # A searching sweep (api/core/search.py): its Optuna sampler (None: every child was made at submit), when a
    # person cancelled it, when it stopped asking for good, and who holds the right to ask until when.
    method: Mapped[str | None] = mapped_column(String(16), default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    asker: Mapped[str | None] = mapped_column(String(64), default=None)
    asking_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    notified: Mapped[bool] = mapped_column(default=False, server_default=false())  # as jobs.notified


class Transfer(Base):
    """A pretrained checkpoint evaluated on a list of datasets (api/core/transfers.py): its probe and fine-tune
    children, and the table they fill."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as validated (api/core/transfer_spec.TransferSpec)
    # One entry per dataset, in the spec's order: {"dataset": row label, "probe": job id, "finetune": job id}
    # (either id null when that child was not asked for).
    layout: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    owner: Mapped[str] = mapped_column(String(64), server_default=LOCAL_OWNER)  # owns every child, too
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_transfers_owner_created", "owner", "created_at"),)


class Webhook(Base):
    """Where to tell an owner that a job or sweep ended (api/core/notify.py): one job's end, one sweep's, or
    (neither set) the end of every job of the owner."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_webhooks_owner", "owner"),)


class WebhookDelivery(Base):
    """One message to one webhook, retried with backoff until delivered or out of attempts; its last outcome."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # job.ended, sweep.ended
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # Slack-compatible: {"text": ..., ...}
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_code: Mapped[int | None] = mapped_column(Integer, default=None)  # the receiver's HTTP status
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )
