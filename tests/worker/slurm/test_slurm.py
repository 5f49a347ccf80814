"""The Slurm executor against a real Slurm (tests/worker/slurm/cluster.py: munged, slurmctld and two slurmd on
this host), a real API on PostgreSQL and Redis, and real `vitq slurm` dispatchers: jobs become Slurm jobs,
Slurm's events (scancel, preemption with and without GraceTime, wall-time limits, a failed node, a memory limit,
a job pending in Slurm) do to them what docs/slurm.md says, and nothing holds an allocation while the queue is
empty."""

# ruff: noqa: F811 (the fixtures imported below are the test functions' arguments)
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, tiny_spec
from tests.worker.slurm.cluster import CPUS_PER_NODE, MEMORY_MB, Cluster
from tests.worker.slurm.fixtures import (  # noqa: F401 (fixtures, module-scoped: one cluster per module)
    POOL,
    SKIPS,
    cluster,
    dispatcher,
    dispatching,
    slurm_id,
    spec,
    stack,
)
from worker.slurm.dispatcher import CODE_ROOT

pytestmark = SKIPS


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
    assert not list(CODE_ROOT.glob("slurm-*.out"))  # Slurm wrote nothing into the checkout


def losses(stack: Stack, job_id: int) -> list[float]:
    response = stack.client.get(f"/jobs/{job_id}/metrics", params={"names": "loss", "max_points": 100_000})
    return list(response.raise_for_status().json()["series"]["loss"]["values"])


def test_two_nodes_of_one_process_train_as_one_node_of_two(stack: Stack, dispatcher: Path) -> None:
    two_nodes = stack.post(spec(steps=10, nodes=2, procs_per_node=1))
    one_node = stack.post(spec(steps=10, nodes=1, procs_per_node=2))
    running = stack.wait_for(two_nodes["id"], lambda j: j["status"] != "queued", timeout=60, what="running")
    assert running["nodes"] in (["n1", "n2"], ["n2", "n1"], []), running  # [] if it already finished
    done = stack.wait_status(two_nodes["id"], "succeeded", timeout=120)
    assert sorted(done["nodes"]) == ["n1", "n2"]
    stack.wait_status(one_node["id"], "succeeded", timeout=120)
    assert losses(stack, two_nodes["id"]) == pytest.approx(losses(stack, one_node["id"]), abs=1e-4)


def test_a_job_no_node_of_the_partition_could_run_is_refused(stack: Stack, dispatcher: Path) -> None:
    deadline = time.monotonic() + 30  # the dispatcher publishes the partition's nodes on its first pass
    while not any(w["partition"] == "batch" for w in stack.client.get("/workers").json()["items"]):
        assert time.monotonic() < deadline, "the dispatcher never published partition batch's nodes"
        time.sleep(0.2)
    nodes = {w["host"] for w in stack.client.get("/workers").json()["items"] if w["pool"] == POOL}
    assert nodes == {"n1", "n2"}
    # From scontrol's word on the nodes: 2 nodes, CPUS_PER_NODE CPUs and MEMORY_MB each.
    for resources, field in (
        ({"nodes": 4}, ["nodes"]),
        ({"procs_per_node": 2 * CPUS_PER_NODE}, ["procs_per_node"]),
        ({"slurm": {"cpus_per_task": CPUS_PER_NODE + 1}}, ["slurm", "cpus_per_task"]),
        ({"slurm": {"mem_per_task": f"{MEMORY_MB + 1}M"}}, ["slurm", "mem_per_task"]),
    ):
        response = stack.client.post("/jobs", json=spec(device="cpu", **resources))
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "resources", *field]


def test_vitq_cancel_scancels_and_the_job_ends_cancelled_with_its_checkpoints(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    job = stack.post(spec(steps=100_000, checkpoint_every=100_000))
    running = stack.wait_for(job["id"], lambda j: j["step"] >= 10, timeout=60, what="training")
    stack.client.post(f"/jobs/{job['id']}/cancel").raise_for_status()
    done = stack.wait_status(job["id"], "cancelled", timeout=60)
    assert done["attempt"] == 1 and done["error"] is None
    assert [c["step"] for c in stack.checkpoints(job["id"])] == [
        done["step"]
    ]  # the one it saved on the way out
    sid = slurm_id(running)
    deadline = time.monotonic() + 30
    while (
        cluster.run("squeue", "-h", "-j", sid, "-o", "%T", check=False).strip()
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert cluster.run("squeue", "-h", "-j", sid, "-o", "%T", check=False).strip() == ""


def test_an_scancel_from_outside_costs_an_attempt_and_the_job_resumes_from_its_checkpoint(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    steps = 400
    job = stack.post(spec(steps=steps, checkpoint_every=100_000))
    running = stack.wait_for(job["id"], lambda j: j["step"] >= 20, timeout=60, what="training")
    cluster.run("scancel", slurm_id(running))
    done = stack.wait_status(job["id"], "succeeded", timeout=120)
    assert done["attempt"] == 2 and done["resumed_from_step"] >= 20
    assert slurm_id(done) != slurm_id(running)  # a new Slurm job: the cancelled one is not Slurm's to rerun
    assert stack.metric_steps(job["id"], "loss") == list(range(5, steps + 1, 5))  # every step exactly once


def test_a_preempted_job_resumes_from_its_checkpoint_at_no_cost(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    steps = 400
    job = stack.post(spec(steps=steps, checkpoint_every=100_000))
    running = stack.wait_for(job["id"], lambda j: j["step"] >= 20, timeout=60, what="training")
    # A job of a higher PriorityTier partition that needs every CPU of the cluster: Slurm preempts ours.
    cluster.run("sbatch", "-p", "urgent", "-N2", "-c4", "-o", "/dev/null", "--wrap", "sleep 2")
    stack.wait_for(job["id"], lambda j: j["status"] == "queued", timeout=60, what="queued")
    done = stack.wait_status(job["id"], "succeeded", timeout=180)
    assert done["attempt"] == 1 and done["error"] is None  # a preemption costs no attempt
    assert done["resumed_from_step"] >= 20
    # The trainer saved its checkpoint within the partition's GraceTime, so the preempted Slurm job ended by
    # itself (COMPLETED, not requeued by Slurm) and the dispatcher submitted the job again.
    assert slurm_id(done) != slurm_id(running)
    assert stack.metric_steps(job["id"], "loss") == list(range(5, steps + 1, 5))


def test_a_run_longer_than_the_time_limit_continues_in_a_new_slurm_job(
    stack: Stack, cluster: Cluster
) -> None:
    # Partition `short`: one minute at most, SIGUSR1 45 s before it. Slurm looks at limits every 30 s, so the
    # signal comes 15-45 s into the first Slurm job; the job is cancelled once the second one trains.
    with dispatching(stack, cluster, "hpc-short", "short", "--time", "1", "--signal-seconds", "45"):
        job = stack.post(tiny_spec(steps=100_000, checkpoint_every=100_000, resources={"pool": "hpc-short"}))
        first = stack.wait_for(job["id"], lambda j: j["status"] == "running", timeout=60, what="running")
        second = stack.wait_for(
            job["id"],
            lambda j: j["executor_ref"] != first["executor_ref"] and j["resumed_from_step"] is not None,
            timeout=120,
            what="a second Slurm job",
        )
        stack.client.post(f"/jobs/{job['id']}/cancel").raise_for_status()
        done = stack.wait_status(job["id"], "cancelled", timeout=60)
    assert second["attempt"] == 1 and second["error"] is None  # a continuation costs no attempt
    assert second["resumed_from_step"] > 0 and done["resumed_from_step"] == second["resumed_from_step"]
    steps = stack.metric_steps(job["id"], "loss")
    assert steps == list(range(5, steps[-1] + 1, 5))  # every step exactly once across the two Slurm jobs


def test_a_failed_node_costs_an_attempt_and_the_job_resumes_from_its_latest_checkpoint(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    steps = 400
    job = stack.post(spec(steps=steps, checkpoint_every=20))
    running = stack.wait_for(job["id"], lambda j: j["step"] >= 30, timeout=60, what="training")
    [node] = running["nodes"]
    # The node stops answering: no signal reaches its processes, and Slurm requeues its job. The dispatcher
    # requeues the vitq job with Slurm's word on the node, and the old run, fenced out, stops by itself.
    cluster.fail_node(node, "vitq-test-failure")
    try:
        lost = stack.wait_for(job["id"], lambda j: j["error"] is not None, timeout=60, what="lost")
        error = lost["error"]
        assert error.startswith(f"Slurm job {slurm_id(running)} was requeued by Slurm (")
        # Slurm's words on the node: its state and reason (sinfo), and srun's, which saw it fail.
        words = (f"{node} down (vitq-test-failure)", f"srun: error: Node failure on {node}")
        assert any(word in error for word in words), error
        assert error.endswith("while attempt 1 of 3 ran") and lost["attempt"] in (1, 2), lost
        done = stack.wait_status(job["id"], "succeeded", timeout=120)
    finally:
        cluster.restore_node(node)
    assert done["attempt"] == 2 and slurm_id(done) != slurm_id(running)
    assert done["nodes"] != [node]  # the new Slurm job ran on the other node, the failed one being down
    # From its latest periodic checkpoint (nothing was saved on the way out), every step stored once.
    assert done["resumed_from_step"] >= 20 and done["resumed_from_step"] % 20 == 0
    assert stack.metric_steps(job["id"], "loss") == list(range(5, steps + 1, 5))
    cluster.wait_nodes_idle()


def test_a_trainer_over_its_memory_limit_is_killed_by_slurm_and_the_job_fails_with_slurms_words(
    stack: Stack, cluster: Cluster
) -> None:
    # 300 MB per process: the node's supervisor fits, a trainer with PyTorch loaded does not. Slurm kills the
    # step (SIGKILL: no checkpoint, no hand-back) and ends the Slurm job FAILED; every attempt ends the same way.
    with dispatching(stack, cluster, "hpc-small", "batch", "--mem-per-task", "300M"):
        job = stack.post(tiny_spec(steps=20, resources={"pool": "hpc-small"}))
        done = stack.wait_status(job["id"], "failed", timeout=180)
    assert done["attempt"] == 3
    assert re.match(rf"Slurm job {slurm_id(done)} ended FAILED \(NonZeroExitCode; ", done["error"]), done[
        "error"
    ]
    assert re.search(r"StepId=\d+\.0 exceeded memory limit \(\d+ > 314572800\)", done["error"]), done["error"]
    assert done["error"].endswith("while attempt 3 of 3 ran")


def test_a_job_pending_in_slurm_shows_slurms_reason_and_job_id(
    stack: Stack, cluster: Cluster, dispatcher: Path
) -> None:
    # Another user's job takes every CPU of the partition: ours waits in Slurm for Resources.
    blocker = cluster.run(
        "sbatch",
        "--parsable",
        "-p",
        "batch",
        "-N2",
        f"-c{CPUS_PER_NODE}",
        "--mem=100M",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 300",
    ).strip()
    try:
        job = stack.post(spec(steps=10))
        pending = stack.wait_for(
            job["id"], lambda j: (j["wait_reason"] or "").endswith("Resources"), timeout=60, what="pending"
        )
        assert pending["status"] == "queued"
        assert pending["wait_reason"] == f"Slurm job {slurm_id(pending)} pending: Resources"
        assert cluster.run("squeue", "-h", "-j", slurm_id(pending), "-o", "%T %r").split() == [
            "PENDING",
            "Resources",
        ]
    finally:
        cluster.run("scancel", blocker)
    done = stack.wait_status(job["id"], "succeeded", timeout=90)
    assert done["wait_reason"] is None and slurm_id(done) == slurm_id(pending)


def test_a_preemption_without_gracetime_costs_no_attempt(stack: Stack, cluster: Cluster) -> None:
    # Partition `nograce`: Slurm requeues the preempted job at once, SIGTERM and KillWait (10 s) later SIGKILL.
    steps = 400
    with dispatching(stack, cluster, "hpc-nograce", "nograce"):
        job = stack.post(tiny_spec(steps=steps, checkpoint_every=20, resources={"pool": "hpc-nograce"}))
        running = stack.wait_for(job["id"], lambda j: j["step"] >= 30, timeout=60, what="training")
        cluster.run(
            "sbatch",
            "-p",
            "urgent",
            "-N2",
            f"-c{CPUS_PER_NODE}",
            "--mem=100M",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 2",
        )
        stack.wait_for(job["id"], lambda j: j["status"] == "queued", timeout=60, what="queued")
        done = stack.wait_status(job["id"], "succeeded", timeout=120)
    assert done["attempt"] == 1 and done["error"] is None  # a preemption costs no attempt
    # Not the requeued Slurm job after Slurm's requeue hold (BeginTime): a new one, as soon as the nodes free.
    assert slurm_id(done) != slurm_id(running)
    assert done["resumed_from_step"] >= 20
    assert stack.metric_steps(job["id"], "loss") == list(range(5, steps + 1, 5))
