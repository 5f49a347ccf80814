"""Tenants: API tokens (hashes only), each job's and sweep's owner, a job's canceller, idempotent submission.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ux_api_tokens_token_hash", "api_tokens", ["token_hash"], unique=True)
    # Jobs made before owners existed belong to the local principal (authentication off).
    op.add_column("jobs", sa.Column("owner", sa.String(length=64), server_default="local", nullable=False))
    op.add_column("jobs", sa.Column("cancelled_by", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.add_column("jobs", sa.Column("request_hash", sa.String(length=64), nullable=True))
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])
    op.create_index("ux_jobs_owner_idempotency_key", "jobs", ["owner", "idempotency_key"], unique=True)
    op.add_column("sweeps", sa.Column("owner", sa.String(length=64), server_default="local", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("owner")
    op.drop_index("ux_jobs_owner_idempotency_key", table_name="jobs")
    op.drop_index("ix_jobs_owner_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite drops columns by copying the table
        for column in ("request_hash", "idempotency_key", "cancelled_by", "owner"):
            batch.drop_column(column)
    op.drop_index("ux_api_tokens_token_hash", table_name="api_tokens")
    op.drop_table("api_tokens")
