"""Workers announce themselves (address, pool, CPUs, GPUs) with a heartbeat; jobs carry their scheduling fields
(pool, priority, devices per node, the devices an attempt holds).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), primary_key=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("jobs", sa.Column("pool", sa.String(length=64), server_default="default", nullable=False))
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("devices", sa.String(length=255), nullable=True))
    op.create_index("ix_jobs_queue", "jobs", ["status", "pool", "priority", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_queue", table_name="jobs")
    with op.batch_alter_table("jobs") as jobs:  # batch: SQLite drops a column by copying the table
        for column in ("devices", "gpus", "priority", "pool"):
            jobs.drop_column(column)
    op.drop_table("workers")
