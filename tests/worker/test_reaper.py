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
from sqlalchemy import update
from sqlalchemy.orm import Session

from api import lifecycle
from api.db import make_engine
from api.migrate import upgrade
from api.models import Job, JobStatus
from api.settings import Settings
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


def test_a_lost_message_is_sent_again_once_a_lease(tmp_path: Path, redis_url: str, unique_queue: str) -> None:
    settings = Settings(home=tmp_path, lease_seconds=2.0)
    upgrade(settings.resolved_database_url)
    long_ago = datetime.now(UTC) - timedelta(seconds=30)
    lost = add_job(settings, created_at=long_ago)
    add_job(settings, created_at=long_ago, wait_reason="waiting for job 1 (running) to finish")
    fresh = add_job(settings)  # just posted: its message may still be on its way
    broker = Celery("reaper-test", broker=redis_url)
    broker.conf.update(task_queues=[Queue(unique_queue)])
    messages = redis.Redis.from_url(redis_url)

    def sent() -> list[str]:
        return [json.loads(m)["headers"]["argsrepr"] for m in messages.lrange(unique_queue, 0, -1)]

    reaper = Reaper(
        settings=settings,
        enqueue=lambda job_id: broker.send_task("vitq.run_job", args=[job_id], queue=unique_queue),
        queue_size=lambda: int(messages.llen(unique_queue)),
    )
    reaper.run_once()
    assert sent() == [f"[{lost}]"]
    messages.delete(unique_queue)  # a worker took it and died before it could claim the job
    reaper.run_once()
    assert sent() == []  # sent less than a lease ago: it may still be on its way
    time.sleep(settings.lease_seconds)
    reaper.run_once()  # a lease later both runnable jobs count as lost; the waiting one is never sent
    assert sorted(sent()) == sorted([f"[{lost}]", f"[{fresh}]"])


def test_reaper_survives_a_broker_it_cannot_reach(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, lease_seconds=1.0)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    spec = JobSpec.model_validate({"kind": "pretrain", "train": {"steps": 30}}).resolved()
    with Session(engine) as session:
        job = Job(name="reaper-test", kind=spec.kind, spec=spec.model_dump(mode="json"), total_steps=30)
        session.add(job)
        session.commit()
        job_id = job.id
        assert lifecycle.claim_job(session=session, job_id=job_id, worker="dead") is not None
        stale = datetime.now(UTC) - timedelta(seconds=30)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
        session.commit()
    # Nothing listens on port 1: publishing raises kombu's OperationalError, which is not an OSError.
    broker = Celery("reaper-test", broker="redis://127.0.0.1:1/0")
    broker.conf.update(
        task_publish_retry=False, broker_connection_retry=False, broker_connection_max_retries=0
    )
    tries: list[str] = []

    def enqueue(job_id: int) -> None:
        tries.append("enqueue")
        broker.send_task("vitq.run_job", args=[job_id])

    def queue_size() -> int:
        tries.append("queue_size")
        with broker.connection_for_read() as connection:
            return int(connection.default_channel.queue_declare(queue="training", passive=True).message_count)

    stop = threading.Event()
    thread = Reaper(settings=settings, enqueue=enqueue, queue_size=queue_size).start(stop)
    try:
        deadline = time.monotonic() + 60
        while len(tries) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert thread.is_alive(), "a broker error ended the reaper thread"
        assert tries[:2] == [
            "enqueue",
            "queue_size",
        ]  # the requeue's send failed, and the next pass still ran
    finally:
        stop.set()
        thread.join(10)
    with Session(engine) as session:
        job_after = session.get(Job, job_id)
        assert job_after is not None and job_after.status == JobStatus.queued  # the resend will retry it
    engine.dispose()
