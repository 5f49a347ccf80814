"""Multi-node jobs through the real service: two `python -m worker` processes form a gang and run one
torch.distributed job (gloo, one process per node) that trains like one node with two processes; kill -9 of one
node's worker restarts the whole job from its checkpoint on a fresh gang."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from api.core.db import scratch_database
from api.core.models import JobNode
from api.core.settings import Settings
from tests.conftest import PG_ADMIN_URL, REDIS_URL
from tests.services import private_postgres, private_redis

from . import netns
from .stack import Stack, running_stack, tiny_spec

pytestmark = pytest.mark.timeout(600)
# Same global batch and seed: one node with two processes and two nodes with one each see the same 32 images
# per step; the losses differ only by float rounding (tests/vit/test_distributed.py explains the bound).
TOLERANCE = 1e-4


def spec(*, steps: int, nodes: int, procs: int, checkpoint_every: int = 10) -> dict[str, Any]:
    base = tiny_spec(steps=steps, checkpoint_every=checkpoint_every)
    base["data"] |= {"augment": False}
    base["train"] |= {"log_every": 1}
    base["resources"] |= {"nodes": nodes, "procs_per_node": procs}
    return base


def losses(stack: Stack, job_id: int) -> list[float]:
    lines = (stack.settings.run_dir(job_id) / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def wait_for_workers(stack: Stack, count: int) -> None:
    """Until `count` workers registered: a multi-node job is refused while fewer live workers could run it."""
    deadline = time.monotonic() + 60
    while len(stack.client.get("/workers").json()["items"]) < count:
        assert time.monotonic() < deadline, "the workers did not register"
        time.sleep(0.2)


def members(settings: Settings, job_id: int) -> list[tuple[int, int, str]]:
    engine = create_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(JobNode.attempt, JobNode.node_rank, JobNode.worker)
                .where(JobNode.job_id == job_id)
                .order_by(JobNode.attempt, JobNode.node_rank)
            ).all()
            return [(a, r, w) for a, r, w in rows]
    finally:
        engine.dispose()


def train_both_ways(stack: Stack) -> tuple[int, list[float], list[float]]:
    """The same 12 steps as 2 nodes x 1 process, then as 1 node x 2 processes: (the gang job's id, its
    losses, the single node's losses)."""
    gang_job = stack.post(spec(steps=12, nodes=2, procs=1))["id"]
    stack.wait_status(gang_job, "succeeded", timeout=240)
    single = stack.post(spec(steps=12, nodes=1, procs=2))["id"]
    stack.wait_status(single, "succeeded", timeout=240)
    return gang_job, losses(stack, gang_job), losses(stack, single)


def test_two_nodes_of_one_process_train_like_one_node_of_two(tmp_path: Path) -> None:
    with scratch_database(PG_ADMIN_URL, "vitq_nodes") as database_url:
        settings = Settings(
            home=tmp_path, database_url=database_url, broker_url=REDIS_URL, queue=f"nodes-{tmp_path.name}"
        )
        with running_stack(settings) as stack:
            for _ in range(2):
                stack.start_worker(VITQ_ADVERTISE_ADDRESS="127.0.0.1")
            wait_for_workers(stack, 2)
            gang_job, two_nodes, one_node = train_both_ways(stack)
            rows = members(settings, gang_job)
            assert stack.metric_steps(gang_job, "loss") == list(range(1, 13))
    assert len(two_nodes) == 12 and abs(two_nodes[-1] - two_nodes[0]) > 1e-3
    assert two_nodes == pytest.approx(one_node, abs=TOLERANCE)
    assert [(attempt, rank) for attempt, rank, _ in rows] == [(1, 0), (1, 1)]
    assert rows[0][2] != rows[1][2]  # two workers, one node each


def test_killing_one_nodes_worker_restarts_the_whole_job_from_its_checkpoint(tmp_path: Path) -> None:
    with scratch_database(PG_ADMIN_URL, "vitq_nodes_kill") as database_url:
        settings = Settings(
            home=tmp_path,
            database_url=database_url,
            broker_url=REDIS_URL,
            queue=f"nodes-kill-{tmp_path.name}",
            lease_seconds=10,
            heartbeat_seconds=1,
        )
        with running_stack(settings) as stack:
            workers = [stack.start_worker(VITQ_ADVERTISE_ADDRESS="127.0.0.1") for _ in range(3)]
            wait_for_workers(stack, 3)
            job_id = stack.post(spec(steps=400, nodes=2, procs=1, checkpoint_every=20))["id"]
            stack.wait_for(job_id, lambda job: job["step"] >= 45, timeout=240, what="running past step 45")
            first = members(settings, job_id)
            by_pid = {w.pid: w for w in workers}
            victim = next(by_pid[int(name.rsplit(":", 1)[1])] for _, rank, name in first if rank == 1)
            stack.kill_worker(victim)
            killed_at = time.monotonic()
            job = stack.wait_for(job_id, lambda j: j["attempt"] >= 2, timeout=120, what="attempt 2")
            restarted_in = time.monotonic() - killed_at
            job = stack.wait_status(job_id, "succeeded", timeout=400)
            second = [row for row in members(settings, job_id) if row[0] == job["attempt"]]
            steps = stack.metric_steps(job_id, "loss")
    assert job["resumed_from_step"] is not None and job["resumed_from_step"] >= 40
    assert steps == sorted(set(steps)) and steps[-1] == 400  # metrics continue without repeats
    assert len(second) == 2 and victim.pid not in {int(n.rsplit(":", 1)[1]) for _, _, n in second}
    assert restarted_in < 120


@pytest.mark.skipif(not netns.available(), reason="network namespaces need root and iproute2")
def test_two_nodes_in_their_own_network_namespaces_train_like_one_node_of_two(tmp_path: Path) -> None:
    """Each worker in a network namespace of its own, reaching the other, PostgreSQL and Redis only over a
    bridge's 10.x addresses: nothing may rely on localhost or on the host name resolving."""
    with netns.network() as net:
        bridge = net.host_address
        with private_postgres(also_listen=bridge) as postgres, private_redis(also_listen=bridge) as redis:
            settings = Settings(home=tmp_path, database_url=postgres.url, broker_url=redis.url, queue="netns")
            with running_stack(settings) as stack:
                for namespace, address in net.namespaces.items():
                    env = {
                        **stack.env(),
                        "VITQ_DATABASE_URL": postgres.url.replace("127.0.0.1", bridge),
                        "VITQ_BROKER_URL": redis.url.replace("127.0.0.1", bridge),
                        "VITQ_ADVERTISE_ADDRESS": address,
                    }
                    log = (tmp_path / f"worker-{namespace}.log").open("ab")
                    command = net.command(namespace, [sys.executable, "-m", "worker"])
                    stack.workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
                wait_for_workers(stack, 2)
                _, two_nodes, one_node = train_both_ways(stack)
                addresses = sorted(w["address"] for w in stack.client.get("/workers").json()["items"])
    assert addresses == sorted(net.namespaces.values())
    assert len(two_nodes) == 12 and two_nodes == pytest.approx(one_node, abs=TOLERANCE)
