"""Enqueue jobs by task name. The API holds one Celery *client* app for its lifetime (building one per request
costs milliseconds) and never imports worker/: the task name and queue are the whole contract.

On Redis the message goes out as one LPUSH on a pooled connection: the same Celery protocol-2 message, in the
envelope kombu's Redis transport reads, without kombu's per-message costs (a new Redis client and a queue
declaration per publish: about 0.7 ms of CPU per POST /jobs). Other brokers go through `send_task`."""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

import redis
from celery import Celery
from kombu import Connection
from kombu.utils.json import dumps
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.core.settings import Settings
from vit.config import DEFAULT_POOL

RUN_JOB_TASK = "vitq.run_job"


def pool_queue(base: str, pool: str) -> str:
    """The broker queue of a pool of workers: the configured queue for the default pool, `queue.pool` else."""
    return base if pool == DEFAULT_POOL else f"{base}.{pool}"


CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


def _is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


def _transport_options(broker_url: str) -> dict[str, Any]:
    if _is_redis(broker_url):
        # Fail fast when Redis is down: POST /jobs has already committed, and the reaper re-enqueues later.
        return {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S}
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
        # Thread-safe, with its own connection pool. One retry, as send_task's policy: a dropped connection is
        # redialled, a Redis that is down is given up on at once (redis-py's default retries ten times).
        self._redis = (
            redis.Redis.from_url(
                self.broker_url, retry=Retry(NoBackoff(), 1), **_transport_options(self.broker_url)
            )
            if _is_redis(self.broker_url)
            else None
        )

    def enqueue(self, job_id: int, pool: str = DEFAULT_POOL) -> bool:
        """Send the job's task to its pool's queue; False (logged) when the broker is unreachable: the job stays
        queued in the database, and the reapers send a wake-up for every runnable job that lacks one."""
        queue = pool_queue(self.queue, pool)
        try:
            if self._redis is not None:
                self._redis.lpush(queue, self._redis_message(job_id, queue))
            else:
                self._app.send_task(
                    RUN_JOB_TASK,
                    args=[job_id],
                    queue=queue,
                    retry=True,
                    retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
                )
        except Exception as error:
            log.error(
                "could not enqueue job %s on queue %s (%s); it stays queued",
                job_id,
                queue,
                error,
                extra={"job_id": job_id},
            )
            return False
        return True

    def _redis_message(self, job_id: int, queue: str) -> str:
        """What `send_task` would push: Celery builds the task message, wrapped as kombu's Redis transport
        wraps it (body base64-encoded JSON, routed straight to the queue's list by the default exchange)."""
        task_id = str(uuid.uuid4())
        message = self._app.amqp.as_task_v2(
            task_id,
            RUN_JOB_TASK,
            args=[job_id],
            argsrepr=f"[{job_id}]",
            kwargsrepr="{}",
            reply_to=self._app.thread_oid,
        )
        return dumps(
            {
                "body": base64.b64encode(dumps(message.body).encode()).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": message.headers,
                "properties": {
                    **message.properties,
                    "delivery_mode": 2,  # persistent
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )

    def purge(self, pool: str) -> int:
        """Drop the wake-ups waiting on `pool`'s queue (a pool served by an executor that reads the database, not
        the broker, such as Slurm's dispatcher); how many there were."""
        queue = pool_queue(self.queue, pool)
        with Connection(self.broker_url, transport_options=_transport_options(self.broker_url)) as connection:
            return int(connection.default_channel.queue_purge(queue) or 0)

    def check(self) -> None:
        """Raise when the broker cannot be reached within a couple of seconds."""
        with Connection(
            self.broker_url,
            connect_timeout=CONNECT_TIMEOUT_S,
            transport_options=_transport_options(self.broker_url),
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        self._app.close()
