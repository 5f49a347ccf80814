"""What a Slurm node of a pool offers a job beyond CPUs and GPUs: its memory, and the pool's CPUs and memory per
training process (`vitq slurm --cpus-per-task/--mem-per-task`), so POST /jobs refuses a job no node could hold.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("memory_mb", sa.Integer(), nullable=True))
    op.add_column("workers", sa.Column("cpus_per_task", sa.Integer(), nullable=True))
    op.add_column("workers", sa.Column("memory_per_task_mb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as workers:  # batch: SQLite drops a column by copying the table
        workers.drop_column("memory_per_task_mb")
        workers.drop_column("cpus_per_task")
        workers.drop_column("memory_mb")
