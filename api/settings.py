"""Service settings, read only from VITQ_* environment variables.

With nothing set, everything lives under VITQ_HOME (default ~/.vitq): a SQLite database, a broker that needs
no server (kombu's SQLAlchemy transport on a second SQLite file) and the run storage. docker compose sets
VITQ_DATABASE_URL / VITQ_BROKER_URL to PostgreSQL and Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITQ_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".vitq")
    database_url: str | None = None  # default: sqlite:///<home>/vitq.db
    broker_url: str | None = None  # default: sqla+sqlite:///<home>/broker.db
    storage: Path | None = None  # run directories; default <home>/storage
    data_dir: Path | None = None  # dataset roots and weight files a job may read; default <home>/data
    queue: str = "training"
    lease_seconds: float = 60.0  # a running job whose heartbeat is older than this belongs to a dead worker
    heartbeat_seconds: float = 5.0
    reap_seconds: float | None = None  # how often each worker's reaper looks; default a third of the lease, 1-5 s
    max_attempts: int = 3  # attempts per job, the first one included
    max_spec_bytes: int = 64 * 1024

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'vitq.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def resolved_storage(self) -> Path:
        return self.storage or self.home / "storage"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.home / "data"

    def run_dir(self, job_id: int) -> Path:
        return self.resolved_storage / "jobs" / str(job_id)


@lru_cache
def get_settings() -> Settings:
    return Settings()
