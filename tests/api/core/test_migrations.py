"""Alembic: upgrade head on an empty database, downgrade base, and no drift between the models and the
migrated schema, on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.core.db import scratch_database
from api.core.migrate import downgrade, upgrade
from api.core.models import Base
from api.core.search import OPTUNA_TABLES

# The queue's expression indexes (`priority DESC`), the second partial, and their columns as SQLite's DDL has them.
QUEUE_INDEXES = {
    "ix_jobs_queue": "(status, pool, priority DESC, created_at, id)",
    "ix_jobs_runnable": (
        "(pool, priority DESC, created_at, id) WHERE status = 'queued' AND wait_reason IS NULL AND "
        "cancel_requested IS 0"
    ),
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("pg_url")
    with scratch_database(server, "vitq_migrate") as url:
        yield url


def test_upgrade_matches_the_models_and_downgrade_removes_everything(empty_database: str) -> None:
    upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            # Optuna's tables, made by migration 0008, are the installed Optuna's own: a version with another
            # schema fails here, not in a study.
            drift = compare_metadata(context, [Base.metadata, OPTUNA_TABLES])
            if connection.dialect.name == "sqlite":
                # Alembic cannot compare SQLite's expression indexes (the queue's `priority DESC`): read their DDL.
                drift = [
                    d
                    for d in drift
                    if not (d[0] in {"add_index", "remove_index"} and d[1].name in QUEUE_INDEXES)
                ]
                for name, columns in QUEUE_INDEXES.items():
                    ddl = connection.exec_driver_sql(
                        f"SELECT sql FROM sqlite_master WHERE name = '{name}'"
                    ).scalar()
                    assert ddl is not None and columns in ddl, ddl
            assert drift == []
            assert {"jobs", "metric_points", "checkpoints"} <= set(inspect(connection).get_table_names())
            if connection.dialect.name == "postgresql":  # compare_metadata does not look at INCLUDE
                indexes = {i["name"]: i for i in inspect(connection).get_indexes("metric_points")}
                covering = indexes["ix_metric_points_job_name_step"]
                assert covering["dialect_options"]["postgresql_include"] == ["value", "id"]
        downgrade(empty_database)
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        upgrade(empty_database)  # and back up again from base
        with engine.connect() as connection:
            assert "jobs" in inspect(connection).get_table_names()
    finally:
        engine.dispose()
