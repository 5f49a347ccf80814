"""The runnable jobs of each pool in queue order, in a partial index of their own: a claim, a queued job's place
(up to the first 1,000 ahead) and the reaper's count of runnable jobs read only these entries, index only, instead
of visiting each queued row for its wait_reason and cancel flag.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As api/core/models.RUNNABLE renders on each database (SQLite stores booleans as 0 and 1).
RUNNABLE = "status = 'queued' AND wait_reason IS NULL AND cancel_requested IS {false}"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_runnable",
        "jobs",
        ["pool", sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=sa.text(RUNNABLE.format(false="false")),
        sqlite_where=sa.text(RUNNABLE.format(false="0")),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_runnable", table_name="jobs")
