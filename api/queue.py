"""Enqueue jobs by task name. The API holds one Celery *client* app for its lifetime (building one per request
costs milliseconds) and never imports worker/: the task name and queue are the whole contract."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Connection

from api.settings import Settings

RUN_JOB_TASK = "vitq.run_job"
CONNECT_TIMEOUT_S = 2.0
log = logging.getLogger(__name__)


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith(("redis://", "rediss://")):
        # Fail fast when Redis is down: POST /jobs has already committed, and the reaper re-enqueues later.
        return {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": 5.0}
    if broker_url.startswith("sqla+sqlite"):
        # kombu hands these to create_engine: wait for SQLite's write lock rather than fail.
        return {"connect_args": {"timeout": 30}}
    return {}


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.broker_url = settings.resolved_broker_url
        self.queue = settings.queue
        self._app = Celery("vitq-api", broker=self.broker_url, set_as_current=False)
        self._app.conf.update(
            task_serializer="json",
            broker_connection_timeout=CONNECT_TIMEOUT_S,
            broker_transport_options=_transport_options(self.broker_url),
            broker_pool_limit=16,  # producers reused across requests; sized for the API's thread pool
        )

    def enqueue(self, job_id: int) -> bool:
        """Send the job's task; False (logged) when the broker is unreachable: the job stays queued in the
        database, and the reaper re-enqueues queued jobs that no worker has claimed."""
        try:
            self._app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
            )
        except Exception as error:
            log.error("could not enqueue job %s on queue %s (%s); it stays queued", job_id, self.queue, error)
            return False
        return True

    def check(self) -> None:
        """Raise when the broker cannot be reached within a couple of seconds."""
        with Connection(
            self.broker_url,
            connect_timeout=CONNECT_TIMEOUT_S,
            transport_options=_transport_options(self.broker_url),
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        self._app.close()
