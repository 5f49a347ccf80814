"""The service end to end on PostgreSQL + Redis: the real API, real `python -m worker` processes, real (tiny)
training under torch.distributed. One stack (and one worker at a time) for the whole module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from sqlalchemy.orm import Session

from api.core import limits
from api.core.db import make_engine, scratch_database
from api.core.models import LOCAL_OWNER
from api.core.settings import Settings
from vit import rundir
from vit.checkpoint import load_state
from vit.model import create_model
from vit.weights import load_pretrained
from worker import log_cap

from .stack import Stack, running_stack, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database_url(pg_url: str) -> Iterator[str]:
    """A database of this module's own: its reaper must not see (and run) other tests' queued jobs."""
    with scratch_database(pg_url, "vitq_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("service")
    queue = f"vitq-e2e-{uuid.uuid4().hex[:10]}"
    # A short lease so the worker-death test does not wait a minute; heartbeats every second keep it.
    settings = Settings(
        home=home,
        database_url=database_url,
        broker_url=redis_url,
        queue=queue,
        lease_seconds=6,
        heartbeat_seconds=1,
        max_attempts=3,
    )
    with running_stack(settings) as stack:
        stack.start_worker()
        yield stack


def test_pretrain_then_fine_tune_from_it(stack: Stack, tmp_path: Path) -> None:
    pretrain = stack.post(tiny_spec(steps=150, checkpoint_every=50, train={"eval_every": 50}))
    finetune_spec = tiny_spec(steps=20, checkpoint_every=0, model={"image_size": 32})  # resized pos-embed
    finetune = stack.post({**finetune_spec, "kind": "finetune", "init": {"from_job": pretrain["id"]}})
    assert finetune["status"] == "queued" and finetune["wait_reason"]  # posted while the pretrain runs

    running = stack.wait_for(
        pretrain["id"], lambda j: j["status"] == "running" and j["step"] > 0, what="a step reported"
    )
    # The heartbeat reports a step the trainer logged (log_every 5): not a count of its own, nor past the end.
    assert running["step"] in stack.metric_steps(pretrain["id"], "loss")
    assert "loss" in running["latest_metrics"]
    assert stack.job(finetune["id"])["status"] == "queued"

    done = stack.wait_status(pretrain["id"], "succeeded")
    assert done["step"] == done["total_steps"] == 150 and done["attempt"] == 1
    assert stack.metric_steps(pretrain["id"], "loss")[-1] == 150
    assert "val_top1" in done["latest_metrics"]
    names = [c["name"] for c in stack.checkpoints(pretrain["id"])]
    assert "step-000150" in names

    tuned = stack.wait_status(finetune["id"], "succeeded")
    assert tuned["wait_reason"] is None and tuned["parent_job_id"] == pretrain["id"]
    assert stack.metric_steps(finetune["id"], "loss")[-1] == 20

    # A checkpoint downloaded over HTTP loads into a fresh model with vit.load_pretrained.
    response = stack.client.get(f"/jobs/{pretrain['id']}/checkpoints/step-000150")
    assert response.status_code == 200
    path = tmp_path / "pretrain.safetensors"
    path.write_bytes(response.content)
    spec = done["spec"]["model"]
    model = create_model(spec["variant"], num_classes=10, **{k: v for k, v in spec.items() if k != "variant"})
    report = load_pretrained(model, path)
    assert not report.missing and not report.unexpected
    weights = safetensors.torch.load_file(str(path))
    assert (model.state_dict()["pos_embed"] == weights["pos_embed"]).all()


def test_cancel_running_and_queued_jobs(stack: Stack) -> None:
    long_job = stack.post(tiny_spec(steps=100_000, checkpoint_every=50))
    behind = stack.post(tiny_spec(steps=20))
    cancelled = stack.client.post(f"/jobs/{behind['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    stack.wait_for(long_job["id"], lambda j: bool(stack.checkpoints(j["id"])), what="a first checkpoint")
    assert stack.client.post(f"/jobs/{long_job['id']}/cancel").status_code == 202
    job = stack.wait_status(long_job["id"], "cancelled", timeout=30)
    assert job["step"] < 100_000
    # The trainer saved a checkpoint at the step it stopped on, and the job keeps its checkpoints.
    kept = stack.checkpoints(long_job["id"])
    assert kept and max(c["step"] for c in kept) == job["step"]

    never = stack.job(behind["id"])
    assert never["status"] == "cancelled" and never["attempt"] == 0 and never["started_at"] is None
    assert not stack.settings.run_dir(behind["id"]).exists()


def test_failing_trainer_fails_the_job_with_its_log_tail(stack: Stack) -> None:
    empty = stack.settings.resolved_data_dir / "empty-folder"
    empty.mkdir()
    job = stack.post(tiny_spec(data={"dataset": "imagefolder", "root": str(empty)}))
    failed = stack.wait_status(job["id"], "failed")
    assert "trainer exited with code 2" in failed["error"]
    assert "empty-folder" in failed["error"]  # the trainer's own message, from train.log
    assert "ChildFailedError" not in failed["error"]  # not torchrun's report
    assert failed["attempt"] == 1  # bad data: retrying cannot help


def test_a_log_over_its_owners_limit_is_cut_and_the_job_trains_on(stack: Stack) -> None:
    """The worker reads the owner's max_log_bytes at launch (an admin's override: this worker's setting is none)."""
    engine = make_engine(stack.settings.resolved_database_url)
    try:
        with Session(engine) as session:
            limits.set_own(session=session, owner=LOCAL_OWNER, values={"max_log_bytes": 400})
        job = stack.post(tiny_spec(steps=60, checkpoint_every=0))
        done = stack.wait_status(job["id"], "succeeded")
        assert done["owner"] == LOCAL_OWNER and stack.metric_steps(job["id"], "loss")[-1] == 60
        log = (stack.settings.run_dir(job["id"]) / rundir.LOG_FILE).read_bytes()
        kept, notice, rest = log.partition(log_cap.notice(400))
        assert notice and len(kept) <= 400 and kept.endswith(b"\n") and rest == b""
        # A failure's message still quotes the trainer, from the lines kept out of the file.
        with Session(engine) as session:
            limits.set_own(session=session, owner=LOCAL_OWNER, values={"max_log_bytes": 1})
        empty = stack.settings.resolved_data_dir / "empty-for-the-log-limit"
        empty.mkdir()
        failed = stack.wait_status(
            stack.post(tiny_spec(data={"dataset": "imagefolder", "root": str(empty)}))["id"], "failed"
        )
        assert "empty-for-the-log-limit" in failed["error"]
    finally:
        with Session(engine) as session:
            limits.unset_own(session=session, owner=LOCAL_OWNER, names=["max_log_bytes"])
        engine.dispose()


def test_killed_trainer_is_retried_from_its_latest_checkpoint(stack: Stack) -> None:
    # The trainer alone dies (an OOM kill): its worker sees the non-zero exit and queues the job again.
    # 400 steps: seconds of margin between the first checkpoint and the end, for the kill to land in.
    job = stack.post(tiny_spec(steps=400, checkpoint_every=25))
    stack.wait_for(job["id"], lambda j: bool(stack.checkpoints(j["id"])), what="a first checkpoint")
    stack.kill_trainer(job["id"])
    resume_step = rundir.latest_checkpoint_step(stack.settings.run_dir(job["id"]))
    assert resume_step is not None and resume_step < 400

    retried = stack.wait_for(job["id"], lambda j: j["attempt"] == 2, timeout=30, what="attempt 2")
    assert retried["status"] in ("queued", "running")
    assert retried["error"].startswith("trainer exited with code -9 (attempt 1 of 3)")  # SIGKILL
    done = stack.wait_status(job["id"], "succeeded", timeout=120)
    assert done["attempt"] == 2 and done["resumed_from_step"] == resume_step and done["error"] is None
    steps = stack.metric_steps(job["id"], "loss")
    assert steps == sorted(set(steps)) and steps[-1] == 400  # continued from the checkpoint, no repeats
    log = (stack.settings.run_dir(job["id"]) / "train.log").read_text()
    resumed = (
        f"resumed from {rundir.checkpoint_name(resume_step)} (step {resume_step})"  # the trainer says so
    )
    assert "attempt 2 on " in log and resumed in log


def test_two_process_gloo_job(stack: Stack) -> None:
    job = stack.post(tiny_spec(steps=20, resources={"procs_per_node": 2}))
    done = stack.wait_status(job["id"], "succeeded", timeout=120)
    assert done["step"] == 20
    # Only two ranks make this: the checkpoint gathers each rank's RNG state, seeded with seed + rank.
    checkpoint = rundir.latest_checkpoint(stack.settings.run_dir(job["id"]))
    assert checkpoint is not None
    state = load_state(checkpoint)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    # The supervisor sampled the trainer's process tree into sys/* series, stored through PostgreSQL's COPY.
    names = "sys/rss_bytes,sys/cpu_percent"
    series = stack.client.get(f"/jobs/{job['id']}/metrics", params={"names": names}).json()["series"]
    assert (
        min(series["sys/rss_bytes"]["values"]) > 10 * 2**20 and min(series["sys/cpu_percent"]["values"]) >= 0
    )
    workers = stack.client.get("/workers").json()["items"]
    assert workers and all(0 <= w["usage"]["cpu_percent"] <= 100 for w in workers)


def test_dead_worker_job_resumes_on_another_worker(stack: Stack) -> None:
    job = stack.post(tiny_spec(steps=300, checkpoint_every=50))
    stack.wait_for(job["id"], lambda j: bool(stack.checkpoints(j["id"])), what="a first checkpoint")
    [worker] = [w for w in stack.workers if w.poll() is None]
    stack.kill_worker(worker)
    resume_step = rundir.latest_checkpoint_step(stack.settings.run_dir(job["id"]))
    assert resume_step is not None and resume_step < 300

    stack.start_worker()
    requeued = stack.wait_for(job["id"], lambda j: j["attempt"] == 2, timeout=60, what="attempt 2")
    assert requeued["status"] in ("queued", "running")
    done = stack.wait_status(job["id"], "succeeded", timeout=120)
    assert done["attempt"] == 2 and done["resumed_from_step"] == resume_step
    steps = stack.metric_steps(job["id"], "loss")
    assert steps == sorted(set(steps)) and steps[-1] == 300  # continued from the checkpoint, no repeats
    assert any(step > resume_step for step in steps)
    log = (stack.settings.run_dir(job["id"]) / "train.log").read_text()
    resumed = (
        f"resumed from {rundir.checkpoint_name(resume_step)} (step {resume_step})"  # the trainer says so
    )
    assert "attempt 2 on " in log and resumed in log
