"""The deployment files' structure, without a Docker engine (tests/compose runs them for real): the services and
their order, health, secrets from .env, one build per image, GPUs per worker, the remote worker, the API image
without torch, and the Prometheus configuration and alert rules."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from api.core.db import make_engine
from api.core.migrate import upgrade
from api.core.settings import Settings
from api.server.prometheus import JobCollector, request_latency
from deploy.image.requirements import TRAINER_ONLY, split

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SERVICES = ("migrate", "api", "worker")


RESET = "!reset"


class ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: `!reset` removes what an extended service set."""


ComposeLoader.add_constructor(RESET, lambda _loader, _node: RESET)


def load(name: str) -> dict[str, Any]:
    return dict(yaml.load((ROOT / name).read_text(), Loader=ComposeLoader))


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(load("docker-compose.yml")["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {key: str(value) for key, value in env.items()}


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_services_start_in_order(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "api", "worker"} <= services.keys()
    # Over TCP: the Unix socket answers before the server listens on the network.
    assert services["postgres"]["healthcheck"]["test"][1:4] == ["pg_isready", "-h", "127.0.0.1"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["python", "-m", "api.core.migrate"]  # retries until connectable
    assert services["migrate"]["restart"] == "no"  # one-shot
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_long_running_service_has_health_init_and_rotated_logs(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["init"] is True, name
        assert service["logging"]["driver"] == "json-file", name
        assert service["logging"]["options"]["max-size"], name
        if name != "migrate":
            assert service["restart"] == "unless-stopped", name
        if name not in ("migrate", "prometheus"):
            assert service["healthcheck"]["test"], name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"][-1] == "/app/deploy/image/worker_alive.py"


def test_one_build_per_image_and_no_torch_in_the_api_image(services: dict[str, Any]) -> None:
    built = {name: s["build"]["target"] for name, s in services.items() if "build" in s}
    assert built == {"migrate": "api", "worker": "worker"}
    assert services["api"]["image"] == services["migrate"]["image"] != services["worker"]["image"]
    api, worker = split(ROOT / "pyproject.toml")
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in api}
    assert not names & TRAINER_ONLY, names & TRAINER_ONLY
    assert {"torch", "torchvision"} <= {re.split(r"[<>=\[ ]", r)[0].lower() for r in worker}


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.index("pip install -r /requirements/api.txt") < text.index("COPY --from=source")
    assert "COPY README.md" not in text.split("FROM scratch AS source")[0]  # a README edit reinstalls nothing
    assert text.count("--mount=type=cache,target=/root/.cache/pip") == 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-\w+$", text, re.M), "base image not pinned"


def test_no_secret_in_the_compose_files_and_every_required_variable_in_env_example() -> None:
    for name in ("docker-compose.yml", "docker-compose.worker.yml"):
        text = (ROOT / name).read_text()
        required = set(re.findall(r"\$\{(\w+):\?", text))
        documented = set(re.findall(r"^#? ?(\w+)=", (ROOT / ".env.example").read_text(), re.M))
        assert required <= documented, f"{name}: {required - documented} not in .env.example"
        assert "vitq:vitq@" not in text and "PASSWORD: vitq" not in text
    for password in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert "${" + password in (ROOT / "docker-compose.yml").read_text()


def test_no_default_password_and_the_head_publishes_only_where_the_operator_says() -> None:
    example = env_example()
    assert example["POSTGRES_PASSWORD"] == example["REDIS_PASSWORD"] == ""  # compose's `:?` refuses to start
    assert "change-me" not in (ROOT / ".env.example").read_text()
    head = load("docker-compose.head.yml")["services"]
    for service in ("postgres", "redis"):
        (published,) = head[service]["ports"]
        assert published.startswith("${VITQ_HEAD_BIND:?"), published  # no 0.0.0.0 default


def test_redis_needs_a_password_and_the_api_is_published_on_localhost(services: dict[str, Any]) -> None:
    assert "--requirepass" in services["redis"]["command"]
    assert environment(services["worker"])["VITQ_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert env_example()["VITQ_API_ADDRESS"].startswith("127.0.0.1:")


def test_the_base_file_starts_on_a_cpu_host_and_the_gpu_file_splits_the_devices(
    services: dict[str, Any],
) -> None:
    assert "nvidia" not in (ROOT / "docker-compose.yml").read_text()
    gpu = load("docker-compose.gpu.yml")["services"]
    devices = {
        name: service["deploy"]["resources"]["reservations"]["devices"][0] for name, service in gpu.items()
    }
    assert set(devices) == {"worker", "worker-gpu1", "worker-gpu2", "worker-gpu3"}
    ids = [d["device_ids"][0] for d in devices.values()]
    assert all(d["driver"] == "nvidia" and "count" not in d for d in devices.values())  # never `count: all`
    defaults = [re.fullmatch(r"\$\{\w+:-(\d+)\}", i) for i in ids]
    assert all(defaults) and len({m.group(1) for m in defaults if m}) == 4, ids
    for name in ("worker-gpu1", "worker-gpu2", "worker-gpu3"):
        assert gpu[name]["extends"]["service"] == "worker" and gpu[name]["profiles"]
        assert gpu[name]["build"] == RESET  # the worker image is built once


def target_and_source(mount: str) -> tuple[str, str]:
    """SOURCE:TARGET[:MODE], where SOURCE may be a ${VARIABLE:-default}."""
    match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::\w+)?", mount)
    assert match, mount
    return match.group(2), match.group(1)


def test_api_and_worker_share_storage_at_the_configured_path(services: dict[str, Any]) -> None:
    storage = environment(services["api"])["VITQ_STORAGE"]
    mounts = {name: dict(map(target_and_source, services[name]["volumes"])) for name in ("api", "worker")}
    assert mounts["api"][storage] == mounts["worker"][storage] == "${VITQ_STORAGE_MOUNT:-storage}"
    assert environment(services["worker"])["VITQ_STORAGE"] == storage


def settings_errors(env: dict[str, str]) -> set[str]:
    return {key for key in env if key.removeprefix("VITQ_").lower() not in Settings.model_fields} - {
        "VITQ_LOG_FORMAT"  # read by api.core.logging_setup, not a setting
    }


def test_every_service_of_the_image_has_the_same_valid_settings(services: dict[str, Any]) -> None:
    envs = [environment(services[name]) for name in IMAGE_SERVICES]
    assert not any(settings_errors(env) for env in envs)
    envs = [{k: v for k, v in env.items() if k not in API_ONLY} for env in envs]
    assert envs[0] == envs[1] == envs[2]
    env = envs[0]
    assert env["VITQ_DATABASE_URL"].startswith("postgresql+psycopg://vitq:${POSTGRES_PASSWORD")
    assert "@postgres:5432/vitq" in env["VITQ_DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "vitq"


API_ONLY = {"VITQ_AUTH", "VITQ_BOOTSTRAP_ADMIN_TOKEN", "VITQ_ALLOWED_HOSTS"}  # only the API reads them


def test_the_api_requires_tokens_and_its_first_admin_token_comes_from_env(services: dict[str, Any]) -> None:
    env = environment(services["api"])
    assert env["VITQ_AUTH"] == "required"
    assert env["VITQ_BOOTSTRAP_ADMIN_TOKEN"].startswith("${VITQ_ADMIN_TOKEN:?")
    assert "VITQ_ADMIN_TOKEN" in env_example() and not env_example()["VITQ_ADMIN_TOKEN"]  # no default token
    assert not API_ONLY & set(environment(services["worker"]))
    # The API answers to the names in .env, and to `api`, the name Prometheus scrapes it by.
    assert env["VITQ_ALLOWED_HOSTS"] == "${VITQ_ALLOWED_HOSTS:-localhost,127.0.0.1,::1},api"
    assert env_example()["VITQ_ALLOWED_HOSTS"] == "localhost,127.0.0.1,::1"


def test_remote_worker_uses_the_heads_database_broker_and_shared_storage(services: dict[str, Any]) -> None:
    remote = load("docker-compose.worker.yml")["services"]["worker"]
    env = environment(remote)
    assert not settings_errors(env)
    assert "@${VITQ_HEAD_HOST" in env["VITQ_DATABASE_URL"] and "@${VITQ_HEAD_HOST" in env["VITQ_BROKER_URL"]
    head_env = environment(services["worker"])
    same = ("VITQ_STORAGE", "VITQ_DATA_DIR", "VITQ_QUEUE", "VITQ_LEASE_SECONDS", "VITQ_HEARTBEAT_SECONDS")
    assert {k: env[k] for k in same} == {k: head_env[k] for k in same}
    assert remote["volumes"][0].startswith("${VITQ_STORAGE_MOUNT:?")
    head = load("docker-compose.head.yml")["services"]
    assert {"postgres", "redis"} == head.keys()


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name /metrics can carry, from the real collector on an empty database."""
    url = f"sqlite:///{tmp_path / 'vitq.db'}"
    upgrade(url)
    registry = CollectorRegistry()
    registry.register(JobCollector(sessionmaker(make_engine(url)), lease_seconds=60))
    request_latency(registry).labels("GET", "/jobs", "200").observe(0.01)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {family.name for family in families} | {s.name for f in families for s in f.samples}


def test_prometheus_config_and_alert_rules(services: dict[str, Any], tmp_path: Path) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    config = load("deploy/prometheus/prometheus.yml")
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    rules = {rule["alert"]: rule for rule in load("deploy/prometheus/alerts.yml")["groups"][0]["rules"]}
    assert set(rules) == {
        "VitqJobsWaitWithoutWorker",
        "VitqJobHeartbeatStale",
        "VitqQueuedJobOlderThanAnHour",
    }
    names = exported_names(tmp_path)
    for name, rule in rules.items():
        used = set(re.findall(r"\bvitq_\w+", rule["expr"]))
        assert used and used <= names, f"{name} uses {used - names}, which /metrics does not export"
    assert "3600" in rules["VitqQueuedJobOlderThanAnHour"]["expr"]


def test_the_api_runs_without_torch(tmp_path: Path) -> None:
    """What the API image lacks (torch, torchvision, safetensors) is made unimportable: the API, `vitq serve --no-worker`'s
    imports and migrations still work, and a job is validated and queued."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in {sorted(TRAINER_ONLY)!r}:
            sys.modules[name.replace("-", "_")] = None  # import raises ImportError
        from fastapi.testclient import TestClient
        import api.cli.main, worker.launch
        from api.server.app import create_app
        from api.core.migrate import upgrade
        from api.core.settings import Settings
        settings = Settings(home=sys.argv[1])
        upgrade(settings.resolved_database_url)
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            job = client.post("/jobs", json={{"kind": "pretrain", "name": "t", "train": {{"steps": 1}}}})
            assert job.status_code == 201, job.text
            assert client.get("/metrics").status_code == 200
            assert client.get("/").status_code == 200
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=ROOT, timeout=120)
