"""The Slurm tests' shared parts: a private cluster, a vitq stack and a `vitq slurm` dispatcher, each once per
test module that imports these fixtures (tests/worker/slurm/test_slurm.py, tests/browser/test_slurm_views.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from api.core.db import scratch_database
from api.core.settings import Settings
from tests.e2e.stack import Stack, running_stack, tiny_spec
from tests.worker.slurm.cluster import Cluster, installed, running_cluster
from worker.slurm.dispatcher import CODE_ROOT

SKIPS = [
    pytest.mark.skipif(
        not installed(),
        reason="Slurm is not installed (slurmctld, slurmd, munged, sbatch): .ci/services installs it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as root only here: run the suite as root"),
]
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
            # Run from elsewhere than the checkout, as on a login node, but with this checkout's code.
            env={**stack.env(), **cluster.env, "VITQ_LOG_LEVEL": "INFO", "PYTHONPATH": str(CODE_ROOT)},
            cwd=stack.settings.home,
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


def spec(steps: int = 30, checkpoint_every: int = 10, **resources: Any) -> dict[str, Any]:
    return tiny_spec(steps=steps, checkpoint_every=checkpoint_every, resources={"pool": POOL, **resources})


def slurm_id(job: dict[str, Any]) -> str:
    assert job["executor_ref"] and job["executor_ref"].startswith("slurm:"), job
    return str(job["executor_ref"]).removeprefix("slurm:")
