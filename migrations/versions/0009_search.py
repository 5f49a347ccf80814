"""Searching sweeps (issue 22): Optuna's study tables, a `pruned` job state, each child's trial number, and a
sweep's method and asking lease; webhooks, their deliveries, and which ended jobs and sweeps were handed to them.

Optuna's tables are created here, not by Optuna's RDBStorage: RDBStorage keeps its own schema revision in the
table `alembic_version`, the very table vitq's revisions live in. Left to itself on a fresh database it stamps
its own head there (after which `alembic upgrade` fails: "Can't locate revision 'v3.2.0.a'"); on a migrated one
it finds vitq's revision and refuses to start ("no longer compatible with the table schema"). So vitq owns the
schema, as of every other table: this is Optuna's schema at its revision v3.2.0.a (Optuna 3.2 up to 5.1, schema
version 12), and api/core/search.py opens the storage with skip_table_creation and skip_compatibility_check.
tests/api/core/test_migrations.py compares these tables with the installed Optuna's models, so an Optuna with
another schema fails the tests rather than a study.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = 512  # Optuna's MAX_INDEXED_STRING_LENGTH
FLOAT = sa.Float(precision=53)


def _attributes(table: str, owner: str, owner_table: str) -> None:
    """Optuna's four key-value attribute tables (study/trial, user/system) share one shape."""
    op.create_table(
        table,
        sa.Column(f"{table.removesuffix('s')}_id", sa.Integer(), nullable=False),
        sa.Column(owner, sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=KEY), nullable=True),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint([owner], [f"{owner_table}.{owner}"]),
        sa.PrimaryKeyConstraint(f"{table.removesuffix('s')}_id"),
        sa.UniqueConstraint(owner, "key"),
    )


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_name", sa.String(length=KEY), nullable=False),
        sa.PrimaryKeyConstraint("study_id"),
    )
    op.create_index("ix_studies_study_name", "studies", ["study_name"], unique=True)
    op.create_table(
        "version_info",
        sa.Column("version_info_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=True),
        sa.Column("library_version", sa.String(length=256), nullable=True),
        sa.CheckConstraint("version_info_id=1"),
        sa.PrimaryKeyConstraint("version_info_id"),
    )
    op.create_table(
        "study_directions",
        sa.Column("study_direction_id", sa.Integer(), nullable=False),
        sa.Column(
            "direction", sa.Enum("NOT_SET", "MINIMIZE", "MAXIMIZE", name="studydirection"), nullable=False
        ),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.study_id"]),
        sa.PrimaryKeyConstraint("study_direction_id"),
        sa.UniqueConstraint("study_id", "objective"),
    )
    _attributes("study_system_attributes", "study_id", "studies")
    _attributes("study_user_attributes", "study_id", "studies")
    op.create_table(
        "trials",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column(
            "state",
            sa.Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate"),
            nullable=False,
        ),
        sa.Column("datetime_start", sa.DateTime(), nullable=True),
        sa.Column("datetime_complete", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.study_id"]),
        sa.PrimaryKeyConstraint("trial_id"),
    )
    op.create_index("ix_trials_study_id", "trials", ["study_id"], unique=False)
    op.create_table(
        "trial_heartbeats",
        sa.Column("trial_heartbeat_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("heartbeat", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.trial_id"]),
        sa.PrimaryKeyConstraint("trial_heartbeat_id"),
        sa.UniqueConstraint("trial_id"),
    )
    op.create_table(
        "trial_intermediate_values",
        sa.Column("trial_intermediate_value_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("intermediate_value", FLOAT, nullable=True),
        sa.Column(
            "intermediate_value_type",
            sa.Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.trial_id"]),
        sa.PrimaryKeyConstraint("trial_intermediate_value_id"),
        sa.UniqueConstraint("trial_id", "step"),
    )
    op.create_table(
        "trial_params",
        sa.Column("param_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("param_name", sa.String(length=KEY), nullable=True),
        sa.Column("param_value", FLOAT, nullable=True),
        sa.Column("distribution_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.trial_id"]),
        sa.PrimaryKeyConstraint("param_id"),
        sa.UniqueConstraint("trial_id", "param_name"),
    )
    _attributes("trial_system_attributes", "trial_id", "trials")
    _attributes("trial_user_attributes", "trial_id", "trials")
    op.create_table(
        "trial_values",
        sa.Column("trial_value_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Integer(), nullable=False),
        sa.Column("value", FLOAT, nullable=True),
        sa.Column(
            "value_type", sa.Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype"), nullable=False
        ),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.trial_id"]),
        sa.PrimaryKeyConstraint("trial_value_id"),
        sa.UniqueConstraint("trial_id", "objective"),
    )

    # vitq's side. jobs.status needs no change for `pruned`: it is a VARCHAR(16) without a CHECK. Plain ALTERs,
    # not batch mode: SQLite adds columns in place, and a batch copy of `jobs` would lose ix_jobs_queue's DESC.
    for column in (
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("asker", sa.String(length=64), nullable=True),
        sa.Column("asking_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified", sa.Boolean(), server_default=sa.false(), nullable=False),
    ):
        op.add_column("sweeps", column)
    op.add_column("jobs", sa.Column("trial", sa.Integer(), nullable=True))
    op.create_index("ux_jobs_sweep_trial", "jobs", ["sweep_id", "trial"], unique=True)
    op.add_column("jobs", sa.Column("notified", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_jobs_notified_status", "jobs", ["notified", "status"])
    # What ended before webhooks existed is not news.
    op.execute("UPDATE jobs SET notified = true WHERE status IN ('succeeded', 'failed', 'cancelled')")
    op.execute("UPDATE sweeps SET notified = true")
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_webhooks_owner", "webhooks", ["owner"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "webhook_id", sa.Integer(), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_at"])
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    # SQLite (3.35 and later) drops a column in place once no index names it.
    op.drop_index("ix_jobs_notified_status", "jobs")
    op.drop_index("ux_jobs_sweep_trial", "jobs")
    for column in ("notified", "trial"):
        op.drop_column("jobs", column)
    for column in ("notified", "asking_until", "asker", "ended_at", "cancelled_at", "method"):
        op.drop_column("sweeps", column)
    for table in (
        "trial_values",
        "trial_user_attributes",
        "trial_system_attributes",
        "trial_params",
        "trial_intermediate_values",
        "trial_heartbeats",
        "trials",
        "study_user_attributes",
        "study_system_attributes",
        "study_directions",
        "version_info",
        "studies",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for enum in ("trialvaluetype", "trialintermediatevaluetype", "trialstate", "studydirection"):
            sa.Enum(name=enum).drop(op.get_bind(), checkfirst=True)
