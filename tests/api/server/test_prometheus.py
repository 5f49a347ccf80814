"""GET /metrics, parsed with prometheus-client's own parser: every metric present, and moving as a job is
queued, trains on a real worker (PostgreSQL + Redis) and ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.api.conftest import Api, submit
from tests.e2e.stack import Stack, running_stack, tiny_spec

FAMILIES = {
    "vitq_jobs": "gauge",
    "vitq_queue_depth": "gauge",
    "vitq_queue_oldest_job_age_seconds": "gauge",
    "vitq_job_heartbeat_age_seconds": "gauge",
    "vitq_job_images_per_second": "gauge",
    "vitq_metric_points_ingested": "counter",
    "vitq_workers_live": "gauge",
    "vitq_workers_busy": "gauge",
    "vitq_gpus": "gauge",
    "vitq_http_request_duration_seconds": "histogram",
}


def scrape(client: TestClient | httpx.Client) -> dict[str, list[Sample]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name, kind in FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
    return {name: families[name].samples for name in families}


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{name}{labels}: {found}"
    return found[0] if found else None


def test_queue_figures_and_route_templates(api: Api) -> None:
    before = scrape(api.client)
    assert value(before["vitq_jobs"], "vitq_jobs", status="queued") == 0
    assert value(before["vitq_queue_depth"], "vitq_queue_depth", pool="default") == 0
    assert value(before["vitq_queue_oldest_job_age_seconds"], "vitq_queue_oldest_job_age_seconds") == 0

    job = submit(api)
    submit(api, resources={"pool": "big"})
    time.sleep(0.3)
    assert api.client.get(f"/jobs/{job['id']}").status_code == 200
    assert api.client.get("/jobs/999999").status_code == 404
    after = scrape(api.client)
    assert value(after["vitq_jobs"], "vitq_jobs", status="queued") == 2
    assert value(after["vitq_queue_depth"], "vitq_queue_depth", pool="default") == 1
    assert value(after["vitq_queue_depth"], "vitq_queue_depth", pool="big") == 1
    big_age = value(
        after["vitq_queue_oldest_job_age_seconds"], "vitq_queue_oldest_job_age_seconds", pool="big"
    )
    assert big_age is not None and 0.3 <= big_age < 60
    age = value(
        after["vitq_queue_oldest_job_age_seconds"], "vitq_queue_oldest_job_age_seconds", pool="default"
    )
    assert age is not None and 0.3 <= age < 60

    latency = after["vitq_http_request_duration_seconds"]
    count = "vitq_http_request_duration_seconds_count"
    assert value(latency, count, method="POST", route="/jobs", status="201") == 2
    assert value(latency, count, method="GET", route="/jobs/{job_id}", status="200") == 1
    assert value(latency, count, method="GET", route="/jobs/{job_id}", status="404") == 1
    routes = {s.labels["route"] for s in latency}
    assert not any(str(job["id"]) in route or "999999" in route for route in routes), routes


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with scratch_database(pg_url, "vitq_prometheus") as database_url:
        settings = Settings(
            home=tmp_path_factory.mktemp("prometheus"),
            database_url=database_url,
            broker_url=redis_url,
            queue=f"vitq-prometheus-{uuid.uuid4().hex[:10]}",
            heartbeat_seconds=1,
        )
        with running_stack(settings) as running:
            yield running


def test_running_job_moves_every_job_metric(stack: Stack, tmp_path: Path) -> None:
    job_id = stack.post(tiny_spec(steps=100_000, checkpoint_every=100_000))["id"]
    queued = scrape(stack.client)
    assert value(queued["vitq_queue_depth"], "vitq_queue_depth", pool="default") == 1
    assert value(queued["vitq_job_heartbeat_age_seconds"], "vitq_job_heartbeat_age_seconds") is None
    ingested_before = value(queued["vitq_metric_points_ingested"], "vitq_metric_points_ingested_total")
    assert ingested_before is not None
    assert value(queued["vitq_workers_live"], "vitq_workers_live") == 0

    stack.start_worker()
    stack.wait_for(job_id, lambda job: job["status"] == "running" and job["step"] >= 20, what="running")
    deadline = time.monotonic() + 60
    while True:
        running = scrape(stack.client)
        speed = value(running["vitq_job_images_per_second"], "vitq_job_images_per_second", job_id=str(job_id))
        if speed is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert speed is not None and speed > 0, "no images/s for the running job"
    assert value(running["vitq_jobs"], "vitq_jobs", status="running") == 1
    assert value(running["vitq_workers_live"], "vitq_workers_live") == 1
    assert value(running["vitq_workers_busy"], "vitq_workers_busy") == 1
    # This host's worker has no GPU (and the job runs on the CPU): both states present, both zero.
    assert value(running["vitq_gpus"], "vitq_gpus", pool="default", state="free") == 0
    assert value(running["vitq_gpus"], "vitq_gpus", pool="default", state="busy") == 0
    assert value(running["vitq_queue_depth"], "vitq_queue_depth", pool="default") == 0
    heartbeat_age = value(
        running["vitq_job_heartbeat_age_seconds"], "vitq_job_heartbeat_age_seconds", job_id=str(job_id)
    )
    assert heartbeat_age is not None and 0 <= heartbeat_age < 30
    ingested = value(running["vitq_metric_points_ingested"], "vitq_metric_points_ingested_total")
    assert ingested is not None and ingested > ingested_before

    stack.client.post(f"/jobs/{job_id}/cancel").raise_for_status()
    stack.wait_status(job_id, "cancelled")
    ended = scrape(stack.client)
    assert value(ended["vitq_jobs"], "vitq_jobs", status="cancelled") == 1
    assert value(ended["vitq_jobs"], "vitq_jobs", status="running") == 0
    assert value(ended["vitq_job_images_per_second"], "vitq_job_images_per_second") is None
    assert value(ended["vitq_workers_busy"], "vitq_workers_busy") == 0

    stack.workers[0].terminate()  # a warm shutdown retires the worker at once
    stack.workers[0].wait(60)
    assert value(scrape(stack.client)["vitq_workers_live"], "vitq_workers_live") == 0
