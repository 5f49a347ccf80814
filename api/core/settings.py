"""Service settings, read only from VITQ_* environment variables.

With nothing set, everything lives under VITQ_HOME (default ~/.vitq): a SQLite database, a broker that needs
no server (kombu's SQLAlchemy transport on a second SQLite file) and the run storage. docker compose sets
VITQ_DATABASE_URL / VITQ_BROKER_URL to PostgreSQL and Redis.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A lease outlives this many heartbeats: one late or lost heartbeat (a slow disk, a database hiccup) is no death.
LEASES_PER_HEARTBEAT = 3
# .env.example's passwords until issue 23: a copied .env may still hold them.
PLACEHOLDER_PASSWORD = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITQ_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".vitq")
    database_url: str | None = None  # default: sqlite:///<home>/vitq.db
    broker_url: str | None = None  # default: sqla+sqlite:///<home>/broker.db
    storage: Path | None = None  # run directories; default <home>/storage
    data_dir: Path | None = None  # dataset roots and weight files a job may read; default <home>/data
    queue: str = "training"
    lease_seconds: float = Field(
        60.0, gt=0
    )  # a running job whose heartbeat is older belongs to a dead worker
    heartbeat_seconds: float = Field(5.0, gt=0)
    pool: str = "default"  # the group of workers this one belongs to (jobs name it as resources.pool)
    devices: str | None = None  # the GPUs this worker may use ("0,1", "none"); default: all nvidia-smi lists
    advertise_address: str | None = None  # where other nodes reach this worker; default: its host name
    reap_seconds: float | None = Field(
        None, gt=0
    )  # how often each worker's reaper looks; default a third of the lease, 1-5 s
    max_attempts: int = 3  # attempts per job, the first one included
    max_spec_bytes: int = 64 * 1024
    # Authentication (api/server/auth.py): "required" (bearer tokens) or "off" (every request acts as a local admin).
    # Unset means required, except under `vitq serve` bound to a loopback address.
    auth: Literal["required", "off"] | None = None
    # Host names the API answers to (comma-separated; "*" any): a request for another name is a 400, so a page
    # that re-points its own DNS name at this server (DNS rebinding) reaches nothing. `vitq serve --host NAME` adds
    # NAME. Origins other than the server's own that may write (e.g. "https://vitq.example" behind a proxy that
    # rewrites Host): api/server/request_guard.py.
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    allowed_origins: str = ""
    # URL prefixes a shard dataset's data.root may start with (comma-separated, e.g. "https://data.example/ds/"):
    # the workers fetch from there, so by default no job may make them fetch anything.
    data_urls: str = ""
    # Submits (POST /jobs, /sweeps, /transfers) and job pages (GET /jobs/{id}) the API runs at once, each in a
    # thread pool of its own (api/server/threads.py); more wait their turn. The default is Python's own for a
    # thread pool: the cores plus 4, at most 32.
    api_writers: int = Field(default_factory=lambda: min(32, (os.cpu_count() or 1) + 4), ge=1, le=256)
    api_readers: int = Field(default_factory=lambda: min(32, (os.cpu_count() or 1) + 4), ge=1, le=256)
    # Stored (hashed) at API start if absent: docker compose's first admin token.
    bootstrap_admin_token: SecretStr | None = None
    # Quotas per owner (api/core/quotas.py); None: no limit. Only max_running_jobs delays (a job waits), the rest refuse
    # a submit with 429.
    max_running_jobs: int | None = Field(None, ge=1)
    max_queued_jobs: int | None = Field(None, ge=1)
    max_gpus: int | None = Field(None, ge=0)  # GPUs asked for by the owner's unfinished jobs together
    # The size of one job, for every owner unless an admin set the owner's own (api/core/limits.py); None: no
    # limit. A submit over one is a 422; max_log_bytes is applied by the worker that writes train.log.
    max_job_params: int | None = Field(None, ge=1)  # the model's parameters
    max_image_size: int | None = Field(None, ge=1)  # model.image_size, pixels a side
    max_job_images: int | None = Field(None, ge=1)  # train.steps x train.batch_size
    max_keep_checkpoints: int | None = Field(None, ge=1)  # train.keep_checkpoints
    max_log_bytes: int | None = Field(None, ge=1)  # train.log of one job, all attempts together
    # Webhooks (api/core/notify.py) call public addresses only; these networks too (e.g. "127.0.0.1/32,10.0.0.0/8").
    webhook_allow: str | None = None

    @model_validator(mode="after")
    def _settings_that_work_together(self) -> Settings:
        """Refuse at start what would only fail later, job after job, with the setting to change."""
        if self.lease_seconds < LEASES_PER_HEARTBEAT * self.heartbeat_seconds:
            raise ValueError(
                f"VITQ_LEASE_SECONDS={self.lease_seconds:g} is shorter than {LEASES_PER_HEARTBEAT} heartbeats "
                f"(VITQ_HEARTBEAT_SECONDS={self.heartbeat_seconds:g}): every running job would lose its lease "
                f"between two heartbeats; set VITQ_LEASE_SECONDS to at least "
                f"{LEASES_PER_HEARTBEAT * self.heartbeat_seconds:g} or lower VITQ_HEARTBEAT_SECONDS"
            )
        if self.reap_seconds is not None and self.reap_seconds > self.lease_seconds:
            raise ValueError(
                f"VITQ_REAP_SECONDS={self.reap_seconds:g} is longer than VITQ_LEASE_SECONDS={self.lease_seconds:g}: "
                "a dead worker's job would wait more than a lease to be requeued; lower VITQ_REAP_SECONDS or unset it"
            )
        if self.auth == "off" and self.bootstrap_admin_token is not None:
            raise ValueError(
                "VITQ_BOOTSTRAP_ADMIN_TOKEN is set but VITQ_AUTH=off: the token would never be asked for; "
                "unset VITQ_AUTH (or set it to required), or unset the token"
            )
        for name, url, variable in (
            ("database", self.database_url, "POSTGRES_PASSWORD"),
            ("broker", self.broker_url, "REDIS_PASSWORD"),
        ):
            password = urlsplit(url or "").password or ""
            if password.startswith(PLACEHOLDER_PASSWORD):
                raise ValueError(
                    f"the {name} password is still the example's placeholder ({password}): set {variable} in .env "
                    "to a secret of your own (e.g. `openssl rand -hex 32`) and recreate the stack"
                )
        storage, data = self.resolved_storage.absolute(), self.resolved_data_dir.absolute()
        if storage.is_relative_to(data):
            raise ValueError(
                f"VITQ_STORAGE ({storage}) is inside VITQ_DATA_DIR ({data}): any job could read every other "
                "owner's runs as a dataset; put the run storage outside the data directory"
            )
        return self

    @property
    def auth_required(self) -> bool:
        return self.auth != "off"

    @property
    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def data_url_prefixes(self) -> tuple[str, ...]:
        """Each prefix ends at a path separator: "https://data.example" must not admit "https://data.example.evil"."""
        prefixes = (p.strip() for p in self.data_urls.split(",") if p.strip())
        return tuple(p if p.endswith("/") else p + "/" for p in prefixes)

    @property
    def allowed_origin_list(self) -> frozenset[str]:
        return frozenset(o.strip().lower().rstrip("/") for o in self.allowed_origins.split(",") if o.strip())

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
    """The settings from the environment; settings that cannot work end the process with one line each that
    names the variable (`vitq serve` and the worker start with this), not a traceback."""
    try:
        return Settings()
    except ValidationError as error:
        raise SystemExit("\n".join(f"vitq: {problem}" for problem in setting_problems(error))) from None


def setting_problems(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors(include_url=False):
        message = detail["msg"].removeprefix("Value error, ")
        names = [str(part) for part in detail["loc"]]
        problems.append(f"VITQ_{'_'.join(names).upper()}: {message}" if names else message)
    return problems
