"""GPU packing without GPUs: a worker told it has three devices (VITQ_DEVICES) runs one-device jobs side by
side on disjoint devices, hands each trainer only its own (CUDA_VISIBLE_DEVICES), and a job needing two waits
until two are free. Jobs of another pool, or of higher priority, are ordered and routed as promised."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.chaos.sampler import trainer_processes
from tests.conftest import PG_ADMIN_URL, REDIS_URL

from .stack import Stack, running_stack, tiny_spec

pytestmark = pytest.mark.timeout(600)


def trainer_devices(stack: Stack) -> dict[int, str]:
    """CUDA_VISIBLE_DEVICES of each job's running rank-0 trainer, from /proc."""
    found = {}
    for trainer in trainer_processes(stack.settings.resolved_storage / "jobs"):
        try:
            environ = Path(f"/proc/{trainer.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        visible = next((e[21:].decode() for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")), None)
        if visible is not None:
            found[trainer.job_id] = visible
    return found


def test_one_device_jobs_share_a_worker_on_disjoint_devices_and_a_big_one_waits(tmp_path: Path) -> None:
    with scratch_database(PG_ADMIN_URL, "vitq_pack") as database_url:
        settings = Settings(
            home=tmp_path, database_url=database_url, broker_url=REDIS_URL, queue=f"pack-{tmp_path.name}"
        )
        with running_stack(settings) as stack:
            stack.start_worker(VITQ_DEVICES="0,1,2")
            # device auto: a GPU job wherever there are GPUs (here the trainers fall back to the CPU).
            gpu = {"device": "auto"}
            one = [
                stack.post(tiny_spec(steps=600, checkpoint_every=200, resources=gpu))["id"] for _ in range(2)
            ]
            two = stack.post(tiny_spec(steps=60, resources={**gpu, "procs_per_node": 2}))["id"]
            samples: list[dict[int, Any]] = []
            environments: dict[int, str] = {}
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                jobs = {j["id"]: j for j in stack.client.get("/jobs").json()["items"]}
                samples.append({i: j for i, j in jobs.items() if j["status"] == "running"})
                environments |= trainer_devices(stack)
                if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                    break
                time.sleep(0.3)
            final = {j["id"]: j for j in stack.client.get("/jobs").json()["items"]}
    assert all(final[i]["status"] == "succeeded" for i in [*one, two]), final
    for running in samples:
        held = [d for job in running.values() for d in job["devices"]]
        assert len(held) == len(set(held)) and set(held) <= {0, 1, 2}, running  # never shared, never more
    # Side by side: each started before the other finished (from the jobs' own times, which no sampling misses).
    first, second = (final[i] for i in one)
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"], final
    assert {len(r[two]["devices"]) for r in samples if two in r} == {2}
    # While both one-device jobs ran, two devices were taken and one was free: the big job waited.
    assert not any(set(one) <= set(r) and two in r for r in samples)
    # Each trainer saw only the devices its job holds.
    assert {environments[i] for i in one} <= {"0", "1", "2"} and environments[one[0]] != environments[one[1]]
    assert len(environments[two].split(",")) == 2
