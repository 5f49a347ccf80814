"""Executors: what launched a job's attempt (a Slurm job id), the executor's word on a pending launch, the nodes
of the attempt; and the Slurm partition of a worker-registry row that stands for a Slurm node.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("executor_ref", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("executor_note", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("placement", sa.Text(), nullable=True))
    op.create_index("ix_jobs_executor_ref", "jobs", ["executor_ref"])
    op.add_column("workers", sa.Column("partition", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as workers:  # batch: SQLite drops a column by copying the table
        workers.drop_column("partition")
    op.drop_index("ix_jobs_executor_ref", table_name="jobs")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("placement")
        jobs.drop_column("executor_note")
        jobs.drop_column("executor_ref")
