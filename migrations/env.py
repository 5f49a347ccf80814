"""Alembic environment. The URL: the config's sqlalchemy.url when set (api/core/migrate.py sets it), else
VITQ_DATABASE_URL, else the service's default (the embedded SQLite file under VITQ_HOME)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from api.core.db import make_engine
from api.core.models import Base
from api.core.search import OPTUNA_TABLES
from api.core.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url


def configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=[Base.metadata, OPTUNA_TABLES],  # Optuna's tables are vitq's to migrate (0008)
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=(connection.dialect.name if connection is not None else url or "").startswith(
            "sqlite"
        ),
        compare_type=True,
    )


def run_offline() -> None:
    configure(url=database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
