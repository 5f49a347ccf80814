"""The reaper thread against a real database and a broker that cannot be reached."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from celery import Celery
from kombu import Queue
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.core import state_machine, workers
from api.core.db import make_engine
from api.core.migrate import upgrade
from api.core.models import Checkpoint, Job, JobStatus, MetricPoint, Worker
from api.core.settings import Settings
from vit import rundir
from vit.config import JobSpec
from worker.reaper import Reaper


def add_job(settings: Settings, **values: object) -> int:
    spec = JobSpec.model_validate({"kind": "pretrain", "train": {"steps": 30}}).resolved()
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        job = Job(
            name="reaper-test", kind=spec.kind, spec=spec.model_dump(mode="json"), total_steps=30, **values
        )
        session.add(job)
        session.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def test_runnable_jobs_without_a_message_get_a_wake_up_however_many_others_wait(
    tmp_path: Path, redis_url: str, unique_queue: str
) -> None:
    settings = Settings(home=tmp_path, lease_seconds=2.0, heartbeat_seconds=0.5)
    upgrade(settings.resolved_database_url)
    first, second, third = add_job(settings), add_job(settings), add_job(settings)
    add_job(settings, wait_reason="waiting for job 1 (running) to succeed")  # never runnable: never sent
    broker = Celery("reaper-test", broker=redis_url)
    broker.conf.update(task_queues=[Queue(unique_queue)])
    messages = redis.Redis.from_url(redis_url)

    def sent() -> list[str]:
        return [json.loads(m)["headers"]["argsrepr"] for m in messages.lrange(unique_queue, 0, -1)]

    reaper = Reaper(
        settings=settings,
        name="w-test",
        enqueue=lambda job_id, _pool: broker.send_task("vitq.run_job", args=[job_id], queue=unique_queue),
        queue_size=lambda: int(messages.llen(unique_queue)),
    )
    reaper.run_once()  # three runnable jobs, no message: one wake-up each, in queue order
    assert sorted(sent()) == sorted([f"[{first}]", f"[{second}]", f"[{third}]"])
    reaper.run_once()
    assert len(sent()) == 3  # as many messages as runnable jobs: nothing more
    messages.rpop(unique_queue)  # a worker took one and died (or the database was down) before its claim
    reaper.run_once()  # the other two still wait; the lost one is made good at once
    assert len(sent()) == 3


def test_reaper_survives_a_broker_it_cannot_reach(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, lease_seconds=1.0, heartbeat_seconds=0.25)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    spec = JobSpec.model_validate({"kind": "pretrain", "train": {"steps": 30}}).resolved()
    with Session(engine) as session:
        job = Job(name="reaper-test", kind=spec.kind, spec=spec.model_dump(mode="json"), total_steps=30)
        session.add(job)
        session.commit()
        job_id = job.id
        assert state_machine.claim(session=session, worker="dead") is not None
        stale = datetime.now(UTC) - timedelta(seconds=30)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
        session.commit()
    # Nothing listens on port 1: publishing raises kombu's OperationalError, which is not an OSError.
    broker = Celery("reaper-test", broker="redis://127.0.0.1:1/0")
    broker.conf.update(
        task_publish_retry=False, broker_connection_retry=False, broker_connection_max_retries=0
    )
    tries: list[str] = []

    def enqueue(job_id: int, _pool: str) -> None:
        tries.append("enqueue")
        broker.send_task("vitq.run_job", args=[job_id])

    def queue_size() -> int:
        tries.append("queue_size")
        with broker.connection_for_read() as connection:
            return int(connection.default_channel.queue_declare(queue="training", passive=True).message_count)

    stop = threading.Event()
    thread = Reaper(settings=settings, name="w-test", enqueue=enqueue, queue_size=queue_size).start(stop)
    try:
        deadline = time.monotonic() + 60
        while len(tries) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert thread.is_alive(), "a broker error ended the reaper thread"
        # The requeued job lacks a message; asking the broker failed, and the next pass still ran.
        assert tries[:2] == ["queue_size", "queue_size"]
    finally:
        stop.set()
        thread.join(10)
    with Session(engine) as session:
        job_after = session.get(Job, job_id)
        assert job_after is not None and job_after.status == JobStatus.queued  # the resend will retry it
    engine.dispose()


def test_a_host_figure_that_cannot_be_read_does_not_stop_the_heartbeat(tmp_path: Path) -> None:
    """The host's figures ride on the registry heartbeat: a measurement that fails (a driver gone odd) sends
    the beat without them; the worker must not look dead, nor the reaper's other duties stop."""
    settings = Settings(home=tmp_path)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        workers.announce(session=session, name="w-test", host="here", pid=1)
        old = datetime.now(UTC) - timedelta(hours=1)
        session.execute(update(Worker).values(heartbeat_at=old, usage={"cpu_percent": 1.0}))
        session.commit()

    def broken() -> dict[str, object]:
        raise RuntimeError("NVML went away")

    reaper = Reaper(
        settings=settings, name="w-test", enqueue=lambda *_: None, queue_size=lambda: 0, host_usage=broken
    )
    reaper.run_once()
    with Session(engine) as session:
        [row] = session.query(Worker).all()
        beat = row.heartbeat_at if row.heartbeat_at.tzinfo else row.heartbeat_at.replace(tzinfo=UTC)
        assert beat > old + timedelta(minutes=59)
        assert row.usage == {"cpu_percent": 1.0}  # the last figures stand: none were measured
    engine.dispose()


def test_a_job_the_reaper_fails_on_its_last_attempt_keeps_what_its_runner_left_on_disk(
    tmp_path: Path,
) -> None:
    # The runner stored metrics to step 10 and listed no checkpoint; its trainer went on to step 25 of 30 and
    # saved two checkpoints before the runner was lost. Ended by the reaper, the job lists both and every step
    # once.
    settings = Settings(home=tmp_path, lease_seconds=1.0, heartbeat_seconds=0.25, max_attempts=1)
    upgrade(settings.resolved_database_url)
    job_id = add_job(settings, max_attempts=1)
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        claim = state_machine.claim(session=session, worker="dead")
        assert claim is not None and claim.job_id == job_id
        stored = [MetricPoint(job_id=job_id, name="loss", step=s, value=1.0, time=0.0) for s in (5, 10)]
        session.add_all(stored)
        stale = datetime.now(UTC) - timedelta(seconds=30)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
        session.commit()
    run_dir = settings.run_dir(job_id)
    for step in (10, 20):
        checkpoint = rundir.checkpoints_root(run_dir) / rundir.checkpoint_name(step)
        checkpoint.mkdir(parents=True)
        (checkpoint / rundir.WEIGHTS_FILE).write_bytes(b"w" * step)
        (checkpoint / rundir.META_FILE).write_text("{}")
    (run_dir / rundir.METRICS_FILE).write_text(
        "".join(rundir.metrics_line(step, {"loss": 1.0 / step}, at=0.0) for step in range(5, 26, 5))
    )
    Reaper(settings=settings, name="w-test", enqueue=lambda *_: None, queue_size=lambda: 0).run_once()
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.failed
        names = session.scalars(
            select(Checkpoint.name).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
        )
        assert list(names) == ["step-000010", "step-000020"]
        steps = session.scalars(
            select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step)
        )
        assert list(steps) == [5, 10, 15, 20, 25]
    # A second look records nothing twice.
    Reaper(settings=settings, name="w-test", enqueue=lambda *_: None, queue_size=lambda: 0).run_once()
    with Session(engine) as session:
        assert (
            session.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id))
            == 5
        )
        assert (
            session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id))
            == 2
        )
    engine.dispose()
