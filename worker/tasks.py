"""Celery tasks: thin. They take a job id and hand it to the supervisor, which re-reads everything."""

from __future__ import annotations

from api.settings import get_settings
from worker.celery_app import app
from worker.supervisor import supervise

TASK_NAME = "vitq.run_job"


@app.task(name=TASK_NAME)
def run_job(job_id: int) -> None:
    supervise(job_id, settings=get_settings(), enqueue=enqueue_job)


def enqueue_job(job_id: int) -> None:
    run_job.apply_async(args=[job_id], queue=get_settings().queue)
