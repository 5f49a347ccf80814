"""Run one job: claim → run directory → trainer under torch.distributed → follow it → final state.

While the trainer runs, the loop follows metrics.jsonl into the database, keeps the checkpoint rows in step
with the directory, renews the lease and watches for a cancel request. A worker that loses its lease kills
its trainer at once: the job now belongs to someone else, and two runners must never share a run directory.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api import lifecycle
from api.db import session_factory
from api.lifecycle import Claim, MetricRow
from api.models import JobStatus
from api.settings import Settings
from vit.config import JobSpec
from worker import rundir
from worker.follow import MetricsFollower
from worker.launch import Trainer, trainer_command, trainer_env

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often metrics, checkpoints and the cancel flag are looked at
STOP_GRACE_SECONDS = 60.0  # time a trainer gets to save a checkpoint after SIGTERM before SIGKILL
# A worker that cannot renew its lease for this part of it stops its trainer. Other workers requeue the job only
# after the whole lease (timed from the heartbeat's own timestamp, on their clocks): the rest is the margin for
# clock skew and slow database calls that keeps two runners from ever overlapping.
SELF_FENCE_FRACTION = 0.5
EXIT_BAD_INPUT = 2  # vit.train: bad spec or bad data; retrying cannot help

# Set when the Celery worker begins a warm shutdown: the running job is checkpointed and handed back.
SHUTDOWN = threading.Event()

Enqueue = Callable[[int], None]


class SpecError(Exception):
    """The job's spec cannot be turned into something the trainer runs (message for the user)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def supervise(job_id: int, *, settings: Settings, enqueue: Enqueue) -> None:
    with session_factory(settings.resolved_database_url)() as session:
        claim = lifecycle.claim_job(session=session, job_id=job_id, worker=worker_name())
        if claim is None:
            log.info("job %s: nothing to claim (already taken, finished, cancelled or waiting)", job_id)
            return
        log.info("job %s: claimed, attempt %s of %s", job_id, claim.attempt, claim.max_attempts)
        Run(claim=claim, session=session, settings=settings, enqueue=enqueue).execute()


@dataclass
class Run:
    claim: Claim
    session: Session
    settings: Settings
    enqueue: Enqueue
    run_dir: Path = field(init=False)
    follower: MetricsFollower = field(init=False)
    checkpoints_seen: list[lifecycle.CheckpointFile] | None = None
    pending: list[MetricRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = self.settings.run_dir(self.claim.job_id)
        self.follower = MetricsFollower(self.run_dir / "metrics.jsonl")

    def execute(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            spec_path = rundir.write_spec(self.run_dir, self._trainer_spec())
        except SpecError as error:
            self._finish(JobStatus.failed, error=str(error))
            return
        resumed_from = rundir.latest_checkpoint_step(self.run_dir)
        rundir.rewind_metrics(self.run_dir, resumed_from)
        lifecycle.record_resume(session=self.session, claim=self.claim, resumed_from_step=resumed_from)
        self._sync()
        log_path = self.run_dir / "train.log"
        log_start = self._write_log_header(log_path, resumed_from)
        procs = int(self.claim.spec["resources"]["procs_per_node"])
        trainer = Trainer(trainer_command(spec_path, self.run_dir, procs), trainer_env(procs), log_path)
        try:
            outcome = self._watch(trainer)
        except BaseException:
            # Whatever broke the loop, the trainer must not run on unsupervised: its lease would expire and a
            # second runner would share its run directory.
            trainer.kill()
            raise
        if outcome == "lease lost":
            log.warning(
                "job %s: lease lost; trainer killed, the job belongs to another worker", self.claim.job_id
            )
            return
        self._sync()
        exit_code = trainer.poll()
        if outcome == "cancelled":
            self._finish(JobStatus.cancelled)
        elif outcome == "shutdown":
            if lifecycle.release_job(session=self.session, claim=self.claim, error=None, count_attempt=False):
                self.enqueue(self.claim.job_id)
        elif exit_code == 0:
            self._finish(JobStatus.succeeded)
        else:
            tail, trainer_exit = rundir.log_tail(log_path, log_start)
            self._failed(trainer_exit if trainer_exit is not None else exit_code, tail)

    def _trainer_spec(self) -> dict[str, Any]:
        """The stored spec, with init.from_job replaced by the parent's checkpoint directory."""
        spec = dict(self.claim.spec)
        if spec["resources"]["nodes"] != 1:
            raise SpecError("multi-node jobs are not supported: this worker runs resources.nodes = 1")
        init = spec.get("init") or {}
        if init.get("from_job") is not None:
            parent = int(init["from_job"])
            name = lifecycle.checkpoint_name(session=self.session, job_id=parent, name=init.get("checkpoint"))
            if name is None:
                wanted = f"checkpoint {init['checkpoint']!r}" if init.get("checkpoint") else "any checkpoint"
                raise SpecError(f"init.from_job: job {parent} has no {wanted}")
            weights = self.settings.run_dir(parent) / "checkpoints" / name
            spec["init"] = {"from_job": None, "checkpoint": None, "weights": str(weights)}
        return JobSpec.model_validate(spec).resolved().model_dump(mode="json")

    def _write_log_header(self, log_path: Path, resumed_from: int | None) -> int:
        start = f"resuming from step {resumed_from}" if resumed_from is not None else "starting"
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        header = f"=== {stamp} attempt {self.claim.attempt} on {self.claim.worker}: {start} ===\n"
        with log_path.open("a") as log_file:
            log_file.write(header)
            return log_file.tell()

    def _watch(self, trainer: Trainer) -> str:
        """Loop until the trainer exits: 'exited', 'cancelled', 'shutdown' or 'lease lost'."""
        heartbeat_every = self.settings.heartbeat_seconds
        last_heartbeat = last_renewed = time.monotonic()
        stopping: str | None = None
        stop_sent = 0.0
        while True:
            exited = trainer.poll() is not None
            try:
                self._ingest()
                self._sync()
                now = time.monotonic()
                if now - last_heartbeat >= heartbeat_every or exited:
                    last_heartbeat = now
                    if not lifecycle.heartbeat(session=self.session, claim=self.claim, step=self._step()):
                        trainer.kill()
                        return "lease lost"
                    last_renewed = now
                if stopping is None and lifecycle.cancel_requested(
                    session=self.session, job_id=self.claim.job_id
                ):
                    stopping = "cancelled"
            except SQLAlchemyError:
                log.exception("job %s: database error while supervising", self.claim.job_id)
                self.session.rollback()
                if time.monotonic() - last_renewed > self.settings.lease_seconds * SELF_FENCE_FRACTION:
                    trainer.kill()  # stop before the lease runs out: then someone else may run the job
                    return "lease lost"
            if exited:
                return stopping or "exited"
            if stopping is None and SHUTDOWN.is_set():
                stopping = "shutdown"
            if stopping is not None and not stop_sent:
                log.info("job %s: stopping the trainer (%s)", self.claim.job_id, stopping)
                trainer.terminate()
                stop_sent = time.monotonic()
            elif stop_sent and time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
                trainer.kill()
            time.sleep(POLL_SECONDS)

    def _ingest(self) -> None:
        # Points read but not yet stored stay pending: a database outage delays them, it does not drop them.
        while new := self.follower.read_new():
            self.pending.extend(new)
            self._store_pending()
        self._store_pending()

    def _store_pending(self) -> None:
        if self.pending:
            lifecycle.add_metric_points(session=self.session, job_id=self.claim.job_id, points=self.pending)
            self.pending = []

    def _sync(self) -> None:
        found = rundir.scan_checkpoints(self.run_dir)
        if found != self.checkpoints_seen:
            lifecycle.sync_checkpoints(session=self.session, job_id=self.claim.job_id, found=found)
            self.checkpoints_seen = found

    def _step(self) -> int:
        """Steps done: the last metrics line, or a checkpoint saved after it (the one a stop request saves)."""
        saved = max((c.step for c in self.checkpoints_seen or []), default=0)
        return max(self.follower.last_step, saved)

    def _finish(self, status: JobStatus, error: str | None = None) -> None:
        self._ingest()
        if not lifecycle.finish_job(
            session=self.session, claim=self.claim, status=status, error=error, step=self._step() or None
        ):
            log.warning("job %s: lost before it could be marked %s", self.claim.job_id, status.value)

    def _failed(self, exit_code: int | None, tail: str) -> None:
        error = f"trainer exited with code {exit_code} (attempt {self.claim.attempt} of {self.claim.max_attempts})"
        error = f"{error}:\n{tail}" if tail else error
        if exit_code == EXIT_BAD_INPUT or self.claim.attempt >= self.claim.max_attempts:
            self._finish(JobStatus.failed, error=error)
        elif lifecycle.release_job(session=self.session, claim=self.claim, error=error):
            log.info("job %s: attempt %s failed; queued again", self.claim.job_id, self.claim.attempt)
            self.enqueue(self.claim.job_id)
