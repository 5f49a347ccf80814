"""Lease recovery, run as a thread in every worker process.

Every few seconds: requeue running jobs whose heartbeat is older than the lease (their worker is dead), release
fine-tunes whose parent succeeded (or fail them when it did not), and enqueue again runnable jobs whose message
was lost (queued for longer than a lease while the broker queue is empty). Every step is a conditional UPDATE,
so any number of workers may run a reaper at once; a duplicate message is harmless (the claim ignores it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from api import lifecycle
from api.db import session_factory
from api.settings import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[[int], None]
QueueSize = Callable[[], int]


def reap_interval(settings: Settings) -> float:
    return max(1.0, min(5.0, settings.lease_seconds / 3))


class Reaper:
    def __init__(self, *, settings: Settings, enqueue: Enqueue, queue_size: QueueSize) -> None:
        self.settings = settings
        self.enqueue = enqueue
        self.queue_size = queue_size
        self.sessions = session_factory(settings.resolved_database_url)
        self.enqueued_at: dict[int, float] = {}  # by this reaper, so one lost message is resent once a lease

    def run_once(self) -> None:
        with self.sessions() as session:
            stale = lifecycle.requeue_stale(session=session, lease_seconds=self.settings.lease_seconds)
            for job_id in stale:
                log.warning("job %s: its worker stopped renewing the lease; queued again", job_id)
            released = lifecycle.release_waiting_children(session=session)
            for job_id in [*stale, *released]:
                self._send(job_id)
            self._resend_lost(session=session)

    def _resend_lost(self, *, session: Session) -> None:
        lease = self.settings.lease_seconds
        queued_before = datetime.now(UTC) - timedelta(seconds=lease)
        candidates = lifecycle.runnable_queued_jobs(session=session, queued_before=queued_before)
        now = time.monotonic()
        # Forget sends older than a lease: they no longer hold a resend back, and the map must not grow forever.
        self.enqueued_at = {j: at for j, at in self.enqueued_at.items() if now - at < lease}
        candidates = [j for j in candidates if j not in self.enqueued_at]
        if candidates and self.queue_size() == 0:
            for job_id in candidates:
                log.info("job %s: queued with no message in the broker; enqueued again", job_id)
                self._send(job_id)

    def _send(self, job_id: int) -> None:
        self.enqueue(job_id)
        self.enqueued_at[job_id] = time.monotonic()

    def run_forever(self, stop: threading.Event) -> None:
        interval = reap_interval(self.settings)
        while not stop.wait(interval):
            try:
                self.run_once()
            except Exception:
                # The database or the broker (kombu's errors are no OSError) may be down: a dead reaper thread
                # would leave every stale job running forever, so log and try again.
                log.exception("reaper: pass failed; trying again in %.0f s", interval)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, args=(stop,), name="vitq-reaper", daemon=True)
        thread.start()
        return thread
