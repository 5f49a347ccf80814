"""Celery tasks: thin. They take a job id and hand it to the supervisor, which re-reads everything."""

from __future__ import annotations

from api.core.broker import RUN_JOB_TASK, pool_queue
from api.core.settings import get_settings
from vit.config import DEFAULT_POOL
from worker.celery_app import app
from worker.supervisor import supervise


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: int) -> None:
    supervise(job_id, settings=get_settings(), enqueue=enqueue_job)


def enqueue_job(job_id: int, pool: str = DEFAULT_POOL) -> None:
    run_job.apply_async(args=[job_id], queue=pool_queue(get_settings().queue, pool))
