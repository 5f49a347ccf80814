"""The Celery app, and nothing else: one declared queue, late acks, one training job at a time per worker.

The database is the record of truth (no result backend). A task may be delivered twice (a Redis message held
longer than its visibility timeout, a lost ack): the supervisor's conditional claim makes that harmless.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from api.core.broker import pool_queue
from api.core.settings import Settings, get_settings

# A job may train for hours; Redis would hand an unacknowledged message to another worker after this long.
# The database lease, not this timeout, recovers jobs of dead workers, so it only needs to be long.
REDIS_VISIBILITY_TIMEOUT_S = 12 * 3600


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith("sqla+"):
        # kombu passes these to sqlalchemy.create_engine (so no polling_interval here): wait for SQLite's write
        # lock instead of failing while the API enqueues and the worker polls the same file.
        return {"connect_args": {"timeout": 30}} if "sqlite" in broker_url else {}
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {
            "visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S,
            "socket_keepalive": True,
            "health_check_interval": 30,
        }
    return {}


def create_celery_app(settings: Settings) -> Celery:
    broker_url = settings.resolved_broker_url
    app = Celery("vitq", broker=broker_url, include=["worker.tasks"])
    app.conf.update(
        task_queues=[Queue(pool_queue(settings.queue, settings.pool))],
        task_default_queue=pool_queue(settings.queue, settings.pool),
        task_create_missing_queues=False,
        task_acks_late=True,  # ack when the job is over, so a worker lost mid-task leaves the message
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,  # never hold a second job while training the first
        worker_concurrency=1,
        worker_pool="solo",  # the task only supervises a subprocess; no fork, so threads are safe
        worker_hijack_root_logger=False,
        # The SQLAlchemy transport has no fanout exchanges for the remote-control channel.
        worker_enable_remote_control=not broker_url.startswith("sqla+"),
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_transport_options(broker_url),
    )
    return app


app = create_celery_app(get_settings())
