"""docker-compose.yml's structure (no docker engine here): the services, their order, the GPU, shared storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {key: str(value) for key, value in env.items()}


def test_services_start_in_order(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "api", "worker"} <= services.keys()
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"  # one-shot
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_worker_reserves_a_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert services["worker"]["command"][:3] == ["python", "-m", "worker"]


def test_api_and_worker_share_storage_at_the_configured_path(services: dict[str, Any]) -> None:
    api, worker = services["api"], services["worker"]
    storage = environment(api)["VITQ_STORAGE"]
    mounts = {
        name: {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        for name in ("api", "worker")
    }
    assert mounts["api"][storage] == mounts["worker"][storage] == "storage"
    assert environment(worker)["VITQ_STORAGE"] == storage


def test_every_service_of_the_image_has_the_same_valid_settings(services: dict[str, Any]) -> None:
    envs = [environment(services[name]) for name in ("migrate", "api", "worker")]
    assert envs[0] == envs[1] == envs[2]
    env = envs[0]
    unknown = {key for key in env if key.removeprefix("VITQ_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {unknown}"
    assert (
        env["VITQ_DATABASE_URL"].startswith("postgresql+psycopg://")
        and "@postgres:" in env["VITQ_DATABASE_URL"]
    )
    assert env["VITQ_BROKER_URL"].startswith("redis://redis:")
    assert services["postgres"]["environment"]["POSTGRES_DB"] in env["VITQ_DATABASE_URL"]
