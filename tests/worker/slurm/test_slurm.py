"""The Slurm executor against a real Slurm (tests/worker/slurm/cluster.py: munged, slurmctld and two slurmd on
this host), a real API on PostgreSQL and Redis, and real `vitq slurm` dispatchers: jobs become Slurm jobs,
Slurm's events (scancel, preemption, wall-time limits) do to them what docs/slurm.md says, and nothing holds
an allocation while the queue is empty."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack, tiny_spec
from tests.worker.slurm.cluster import Cluster, installed, running_cluster

pytestmark = pytest.mark.skipif(
    not installed(),
    reason="Slurm is not installed (slurmctld, slurmd, munged, sbatch): .ci/services installs it",
)
POOL = "hpc"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("vitq-slurm")
    with scratch_database(pg_url, "vitq_slurm") as url:
        settings = Settings(
            home=home,
            database_url=url,
            broker_url=redis_url,
            queue=f"vitq-slurm-{os.getpid()}",
            lease_seconds=20,
            heartbeat_seconds=1,
            max_attempts=3,
        )
        with running_stack(settings) as running:
            yield running


@contextmanager
def dispatching(stack: Stack, cluster: Cluster, pool: str, partition: str, *options: str) -> Iterator[Path]:
    """A `vitq slurm` process for `pool`; its log's path. Stopped (SIGTERM, by its pid) on the way out."""
    log_path = stack.settings.home / f"dispatcher-{pool}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli.main",
                "slurm",
                "--pool",
                pool,
                "--partition",
                partition,
                "--poll-seconds",
                "0.5",
                *options,
            ],
            env={**stack.env(), **cluster.env, "VITQ_LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=log,
        )
    try:
        yield log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def dispatcher(stack: Stack, cluster: Cluster) -> Iterator[Path]:
    with dispatching(stack, cluster, POOL, "batch", "--signal-seconds", "30") as log:
        yield log


def spec(steps: int = 30, **resources: Any) -> dict[str, Any]:
    return tiny_spec(steps=steps, resources={"pool": POOL, **resources})


def slurm_id(job: dict[str, Any]) -> str:
    assert job["executor_ref"] and job["executor_ref"].startswith("slurm:"), job
    return str(job["executor_ref"]).removeprefix("slurm:")


def test_a_one_node_job_runs_as_a_slurm_job_and_nothing_holds_an_allocation_after(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    job = stack.post(spec(steps=20))
    running = stack.wait_status(job["id"], "running", timeout=60)
    assert running["nodes"] == ["n1"] or running["nodes"] == ["n2"]
    done = stack.wait_status(job["id"], "succeeded", timeout=90)
    assert done["attempt"] == 1 and done["step"] == 20
    assert stack.metric_steps(job["id"], "loss") == [5, 10, 15, 20]
    assert (stack.settings.run_dir(job["id"]) / f"slurm-{slurm_id(done)}.out").exists()
    # The queue is empty: no Slurm job of ours is pending or running, and nothing else holds an allocation.
    deadline = time.monotonic() + 20
    while cluster.run("squeue", "-h", "-o", "%i %T").strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.run("squeue", "-h", "-o", "%i %T").strip() == ""
