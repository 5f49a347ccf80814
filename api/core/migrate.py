"""Bring a database to the newest schema, in code: `vitq serve`, the compose migrate step and tests call
`upgrade(url)`; `alembic upgrade head` from the repository does the same. `python -m api.core.migrate` (the compose
migrate service) first waits for the database to accept connections: a container that reports healthy may
not be reachable over the network yet."""

from __future__ import annotations

import logging
import sysconfig
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.core.db import make_engine
from api.core.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60.0
log = logging.getLogger(__name__)


def script_location() -> Path:
    """The checkout's migrations/ (a source tree, an editable install, the image), else the copy a wheel
    installs under <prefix>/share/vitq/migrations (pyproject.toml's data-files)."""
    source = ROOT / "migrations"
    return source if source.is_dir() else Path(sysconfig.get_path("data")) / "share" / "vitq" / "migrations"


def alembic_config(database_url: str) -> Config:
    ini = ROOT / "alembic.ini"  # absent from an installed wheel: every option it needs is set here
    config = Config(str(ini)) if ini.is_file() else Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))  # configparser interpolation
    config.attributes["configure_logger"] = False  # leave the host process's logging alone
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def wait_for_database(database_url: str, timeout_s: float = WAIT_SECONDS, interval_s: float = 1.0) -> None:
    """Return once `SELECT 1` succeeds; raise the last connection error after timeout_s."""
    engine = make_engine(database_url)  # creates a SQLite file's folder too
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except OperationalError as error:
                if time.monotonic() >= deadline:
                    raise
                log.warning("database not ready (%s); retrying", str(error.orig).strip().splitlines()[0])
                time.sleep(interval_s)
    finally:
        engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = get_settings().resolved_database_url
    wait_for_database(url)
    upgrade(url)
    log.info("database at the newest schema")


if __name__ == "__main__":
    main()
