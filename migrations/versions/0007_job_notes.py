"""Tags and notes on jobs (their owner's), and each worker's calibrated peak rate (vit/flops.py, worker/peak.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tags", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("notes", sa.Text(), nullable=True))
    op.add_column("workers", sa.Column("peak_flops", sa.Float(), nullable=True))
    op.add_column("workers", sa.Column("peak_source", sa.Text(), nullable=True))


def downgrade() -> None:
    for table, column in (
        ("workers", "peak_source"),
        ("workers", "peak_flops"),
        ("jobs", "notes"),
        ("jobs", "tags"),
    ):
        op.drop_column(table, column)
