"""Sweeps: a sweeps table, and jobs.sweep_id linking each child job to the sweep that made it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Batch mode: SQLite cannot add a foreign key to an existing table in place (Alembic copies it there).
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        jobs.create_foreign_key("fk_jobs_sweep_id_sweeps", "sweeps", ["sweep_id"], ["id"])
        jobs.create_index("ix_jobs_sweep_id", ["sweep_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_index("ix_jobs_sweep_id")
        jobs.drop_constraint("fk_jobs_sweep_id_sweeps", type_="foreignkey")
        jobs.drop_column("sweep_id")
    op.drop_table("sweeps")
