"""`docker compose up` for real (`make compose-test`; skipped without a Docker engine): build, health, a tiny
job trained and its checkpoint downloaded, two workers running two jobs at once without recreating the API,
and `down -v`. On an offline machine, run ../shared/tools/local-docker.sh first (local base image stand-ins)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import safetensors.torch
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import tiny_spec

from .project import Project, compose_project, docker_answers

BUILD_TIMEOUT_S = (
    3600  # the first build downloads torch and the CUDA libraries (GBs); later ones hit the cache
)
HEALTH_TIMEOUT_S = 180
JOB_TIMEOUT_S = 300

why_not = docker_answers()
pytestmark = [
    pytest.mark.compose,
    pytest.mark.skipif(why_not is not None, reason=f"no Docker engine: {why_not}"),
    pytest.mark.timeout(BUILD_TIMEOUT_S + 900),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    with compose_project(tmp_path_factory.mktemp("compose")) as running:
        running.compose("up", "--build", "-d", timeout=BUILD_TIMEOUT_S)
        wait_healthy(running, {"postgres": 1, "redis": 1, "api": 1, "worker": 1})
        yield running


def wait_healthy(project: Project, services: dict[str, int]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        states = {name: [c["Health"] or c["State"] for c in project.containers(name)] for name in services}
        if all(states[name] == ["healthy"] * count for name, count in services.items()):
            return
        migrate = project.containers("migrate")
        assert not migrate or migrate[0]["State"] != "exited" or "(0)" in migrate[0]["Status"], project.logs()
        assert time.monotonic() < deadline, (
            f"not healthy after {HEALTH_TIMEOUT_S} s: {states}\n{project.logs()}"
        )
        time.sleep(2)


def wait_status(api: httpx.Client, job_id: int, status: str, project: Project) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := api.get(f"/jobs/{job_id}").raise_for_status().json())["status"] != status:
        assert job["status"] not in {"succeeded", "failed", "cancelled"} - {status}, (
            f"{job}\n{project.logs()}"
        )
        assert time.monotonic() < deadline, f"job {job_id} not {status}: {job}\n{project.logs()}"
        time.sleep(1)
    return dict(job)


def post(api: httpx.Client, spec: dict[str, Any]) -> int:
    response = api.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_up_trains_a_job_and_serves_its_checkpoint(project: Project, tmp_path: Path) -> None:
    with httpx.Client(base_url=project.api_url, timeout=30, headers=project.headers) as api:
        health = api.get("/healthz").json()
        assert health["database"] == health["broker"] == "ok", health
        job_id = post(api, tiny_spec(steps=30, checkpoint_every=10))
        wait_status(api, job_id, "succeeded", project)
        checkpoints = api.get(f"/jobs/{job_id}/checkpoints").raise_for_status().json()["items"]
        assert checkpoints, "no checkpoint registered"
        weights = api.get(f"/jobs/{job_id}/checkpoints/{checkpoints[-1]['name']}").raise_for_status()
        metrics = api.get("/metrics").raise_for_status().text  # prometheus-client in the API image
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("vitq_jobs", (("status", "succeeded"),))] == 1
    assert samples[("vitq_workers_live", (("pool", "default"),))] == 1
    tensors = safetensors.torch.load(weights.content)
    assert "cls_token" in tensors and "head.weight" in tensors, sorted(tensors)[:10]


def test_two_workers_run_two_jobs_at_once_without_recreating_the_api(project: Project) -> None:
    api_before = project.container_ids("api")
    project.compose("up", "-d", "--scale", "worker=2")
    wait_healthy(project, {"api": 1, "worker": 2})
    assert project.container_ids("api") == api_before, "scaling the workers recreated the API"
    with httpx.Client(base_url=project.api_url, timeout=30, headers=project.headers) as api:
        jobs = [post(api, tiny_spec(steps=3000, checkpoint_every=1000)) for _ in range(2)]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            states = [api.get(f"/jobs/{job_id}").raise_for_status().json() for job_id in jobs]
            if all(job["status"] == "running" for job in states):
                break
            assert all(job["status"] in ("queued", "running") for job in states), (
                f"{states}\n{project.logs()}"
            )
            assert time.monotonic() < deadline, f"never both running: {states}\n{project.logs()}"
            time.sleep(0.5)
        assert len({job["worker"] for job in states}) == 2, states
        for job_id in jobs:
            api.post(f"/jobs/{job_id}/cancel").raise_for_status()
        for job_id in jobs:
            wait_status(api, job_id, "cancelled", project)
    assert project.container_ids("api") == api_before
