"""SQLAlchemy tables: the job's record of truth (not Celery's result backend)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The largest id SQLite's INTEGER and PostgreSQL's bigint hold (SQLite's driver cannot even send a larger one).
MAX_ID = 2**63 - 1
# Job ids are 32-bit INTEGER columns (jobs.id and every column that refers to a job): a larger id names no job,
# and PostgreSQL refuses to compare it with them.
MAX_JOB_ID = 2**31 - 1


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

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


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
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # 0 until first claimed
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, default=None)
    wait_reason: Mapped[str | None] = mapped_column(Text, default=None)  # why a queued job has not started
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_kind_created", "kind", "created_at"),
    )


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


class Worker(Base):
    """A worker process that announced itself; alive while its heartbeat is younger than the lease."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as jobs.worker names it
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Sweep(Base):
    """A set of jobs made from one base spec and a grid or random space over its fields (api/sweeps.py)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as validated: base, and grid or random
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
