"""Multi-node jobs: each job's node count, and the gang table (a worker's rank in a job's attempt).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("nodes", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "job_nodes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node_rank", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("devices", sa.String(length=255), nullable=True),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "attempt", "node_rank", name="ux_job_nodes_rank"),
        sa.UniqueConstraint("job_id", "attempt", "worker", name="ux_job_nodes_worker"),
    )


def downgrade() -> None:
    op.drop_table("job_nodes")
    with op.batch_alter_table("jobs") as jobs:  # batch: SQLite drops a column by copying the table
        jobs.drop_column("nodes")
