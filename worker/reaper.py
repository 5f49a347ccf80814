"""Lease recovery and wake-ups, run as a thread in every worker process.

Every few seconds: renew this worker's own heartbeat in the registry, requeue running jobs whose heartbeat is
older than the lease (their runner stopped renewing), release fine-tunes whose parent succeeded (or fail them
when it did not), and keep at least as many messages in the broker as there are runnable jobs. A message is a
wake-up, not an assignment (a worker claims the first runnable job in queue order), so a message lost on the way
(consumed while the database was down, or never sent because the broker was) is made good on the next pass,
however many others wait. Every step is a conditional UPDATE or harmless when repeated, so any number of workers
may run a reaper at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import gangs, search, state_machine, workers
from api.core.db import session_factory
from api.core.models import Job
from api.core.settings import Settings
from vit import rundir
from worker import left_on_disk

log = logging.getLogger(__name__)

Enqueue = Callable[[int, str], None]
QueueSize = Callable[[], int]
HostUsage = Callable[[], dict[str, Any]]
FORGET_WORKERS_AFTER_S = 24 * 3600


def reap_interval(settings: Settings) -> float:
    if settings.reap_seconds is not None:
        return settings.reap_seconds
    return max(1.0, min(5.0, settings.lease_seconds / 3))


class Reaper:
    def __init__(
        self,
        *,
        settings: Settings,
        name: str,
        enqueue: Enqueue,
        queue_size: QueueSize,
        host_usage: HostUsage | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.enqueue = enqueue
        self.queue_size = queue_size
        self.host_usage = host_usage  # the host's figures, sent with each heartbeat (worker/usage.py)
        self.sessions = session_factory(settings.resolved_database_url)

    def run_once(self) -> None:
        with self.sessions() as session:
            workers.beat(session=session, name=self.name, usage=self._host_figures())
            ended: list[int] = []
            stale = state_machine.requeue_stale(
                session=session,
                lease_seconds=self.settings.lease_seconds,
                complete_on_disk=self._complete,
                ended=ended,
            )
            for job_id in ended:  # its runner is gone: what it left on disk is recorded here
                checkpoints, points = left_on_disk.record(
                    session=session, job_id=job_id, run_dir=self.settings.run_dir(job_id)
                )
                log.warning(
                    "job %s: its runner stopped renewing the lease on its last attempt; ended, with %d "
                    "checkpoints and %d metric points it left on disk recorded",
                    job_id,
                    checkpoints,
                    points,
                )
            stale += gangs.requeue_broken_gangs(session=session, lease_seconds=self.settings.lease_seconds)
            for job_id in stale:
                log.warning("job %s: its runner stopped renewing the lease; queued again", job_id)
            state_machine.release_waiting_children(session=session)
            self._top_up_searches(session=session)
            # Requeued and released jobs get their wake-ups here too, each from its own pool's reapers.
            self._wake_up_for_lost_messages(session=session)
            workers.forget_dead(session=session, older_than_seconds=FORGET_WORKERS_AFTER_S)

    def _complete(self, job_id: int, total_steps: int) -> bool:
        """Whether a lost job's trainer finished every step (run directories are on storage every worker sees)."""
        return rundir.run_complete(self.settings.run_dir(job_id), total_steps)

    def _host_figures(self) -> dict[str, Any] | None:
        """The host's figures for this beat; None (the last ones stand) when they cannot be read: a measurement
        must never cost the heartbeat, or the worker would look dead and this pass's duties go undone."""
        if self.host_usage is None:
            return None
        try:
            return self.host_usage()
        except Exception:
            log.warning("could not read the host's figures; the heartbeat goes without them", exc_info=True)
            return None

    def _top_up_searches(self, *, session: Session) -> None:
        """Searching sweeps: tell their studies about children that ended and ask for the next ones. A child
        ended by this reaper, a cancel or a worker that died before it asked is made good here."""
        for sweep_id in search.open_searches(session=session):
            try:
                made = search.top_up(
                    sessions=self.sessions,
                    url=self.settings.resolved_database_url,
                    sweep_id=sweep_id,
                    max_attempts=self.settings.max_attempts,
                    settings=self.settings,
                )
            except Exception:  # one broken study must not stop the others, nor the rest of the pass
                log.exception("sweep %s: topping up failed; trying again next pass", sweep_id)
                continue
            for job_id, pool in made:
                log.info("sweep %s: job %s asked for", sweep_id, job_id)
                self.enqueue(job_id, pool)

    def _wake_up_for_lost_messages(self, *, session: Session) -> None:
        pool = self.settings.pool
        runnable = state_machine.runnable_count(session=session, pool=pool)
        if not runnable:
            return
        missing = runnable - self.queue_size()
        if missing <= 0:
            return
        in_pool = (*state_machine.runnable(), Job.pool == pool)
        ids = session.scalars(state_machine.queue_order(select(Job.id).where(*in_pool)).limit(missing)).all()
        session.rollback()
        for job_id in ids:
            log.info("job %s: runnable with no message in the broker; sending a wake-up", job_id)
            self.enqueue(job_id, pool)

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
