"""`python -m worker [--concurrency N] [--queue Q]`: a Celery worker for training jobs, plus the lease reaper."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from kombu import Connection
from kombu.exceptions import ChannelError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument(
        "--concurrency", type=int, help="training jobs at once (default: one per GPU, or 1 on a CPU machine)"
    )
    parser.add_argument("--queue", help="queue to consume (default: VITQ_QUEUE or 'training')")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


class QueueSize:
    """Messages waiting in the queue, asked over one connection kept for the worker's life. A connection (and
    its channel) per question used to drain the embedded broker's connection pool within minutes."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue
        self.connection: Connection | None = None

    def __call__(self) -> int:
        if self.connection is None:
            self.connection = self.app.connection_for_read()
        try:
            declared = self.connection.default_channel.queue_declare(queue=self.queue, passive=True)
            return int(declared.message_count)
        except ChannelError:
            return 0  # Redis drops an empty queue's key: "no such queue" means no messages
        except Exception:
            self.close()  # a broken connection is rebuilt on the next call
            raise

    def close(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            try:
                connection.release()
            except Exception:
                logging.getLogger(__name__).debug("closing the queue-size connection failed", exc_info=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.queue:
        # Settings come only from VITQ_* variables; this must be set before the app reads them.
        os.environ["VITQ_QUEUE"] = args.queue
    from api.core import workers
    from api.core.broker import pool_queue
    from api.core.db import session_scope
    from api.core.logging_setup import configure_logging
    from api.core.settings import get_settings
    from worker import devices, peak, supervisor, usage
    from worker.celery_app import app
    from worker.launch import trainer_env
    from worker.notifier import Notifier
    from worker.reaper import Reaper
    from worker.supervisor import SHUTDOWN, worker_name
    from worker.tasks import enqueue_job

    configure_logging(args.loglevel)  # VITQ_LOG_FORMAT=json: JSON lines, each about a job with its job_id
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)  # the embedded default keeps its SQLite files here
    settings.resolved_storage.mkdir(parents=True, exist_ok=True)
    name = worker_name()
    database = settings.resolved_database_url
    gpus = devices.detect(settings.devices)
    supervisor.DEVICE_SLOTS = devices.DeviceSlots([d["index"] for d in gpus])
    concurrency = args.concurrency or max(1, len(gpus))
    try:
        with session_scope(database) as session:
            workers.announce(
                session=session,
                name=name,
                host=socket.gethostname(),
                pid=os.getpid(),
                address=settings.advertise_address or socket.gethostname(),
                pool=settings.pool,
                cpus=os.cpu_count() or 1,
                devices=gpus,
                concurrency=concurrency,
            )
    except Exception:
        logging.getLogger(__name__).exception("could not register in the database; the reaper will retry")

    def record_peak(flops_per_s: float, source: str) -> tuple[float, str]:
        with session_scope(database) as session:
            return workers.record_peak(session=session, name=name, flops_per_s=flops_per_s, source=source)

    indices = [d["index"] for d in gpus]
    peak.calibrate_in_background(gpus, trainer_env(1, indices[:1] if gpus else None), record_peak)

    def on_shutdown(**_: Any) -> None:
        SHUTDOWN.set()

    worker_shutting_down.connect(on_shutdown, weak=False)
    stop = threading.Event()
    queue = pool_queue(settings.queue, settings.pool)
    queue_size = QueueSize(app, queue)
    host = usage.HostUsage(indices)
    Reaper(
        settings=settings, name=name, enqueue=enqueue_job, queue_size=queue_size, host_usage=host.sample
    ).start(stop)
    Notifier(settings=settings).start(stop)
    pool = "solo" if concurrency == 1 else "threads"
    try:
        app.worker_main(
            [
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--queues={queue}",
                f"--loglevel={args.loglevel}",
                f"--hostname=vitq-{socket.gethostname()}-{os.getpid()}",
                "--without-gossip",  # no chatter between workers: the database coordinates them
                "--without-mingle",
            ]
        )
    finally:
        stop.set()
        queue_size.close()
        try:
            with session_scope(database) as session:
                workers.retire(session=session, name=name)
        except Exception:
            logging.getLogger(__name__).warning("could not mark this worker stopped in the database")


if __name__ == "__main__":
    main()
