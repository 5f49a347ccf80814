"""Run one job: claim → run directory → trainer under torch.distributed → follow it → final state.

While the trainer runs, the loop follows metrics.jsonl into the database, keeps the checkpoint rows in step with
the directory, renews the lease (in the database, then in the run directory's lease file for the trainer) and
watches for a cancel request. Every database call runs in a session of its own and may fail: metrics wait in a
buffer and the calls are retried with backoff, so an outage shorter than part of the lease costs nothing. A
longer one makes the trainer checkpoint and stop; a supervisor that stalls (or loses the job) stops renewing the
lease file, and the trainer stops itself before anyone else may take the job.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.core import gangs, limits, search, state_machine
from api.core.db import session_factory
from api.core.logging_setup import job_context
from api.core.models import JobStatus
from api.core.settings import Settings
from api.core.state_machine import Claim
from vit import rundir
from vit.config import JobSpec, SpecError
from worker import fenced_writes, gang, usage
from worker.devices import DeviceSlots
from worker.launch import Trainer, trainer_command, trainer_env
from worker.placement import NodePlace

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often metrics, checkpoints and the trainer are looked at
STOP_GRACE_SECONDS = 60.0  # time a trainer gets to save a checkpoint after SIGTERM before SIGKILL
# Parts of the lease, timed from the last renewal the database confirmed. Other workers requeue the job only
# after the whole lease; what is left after the fence is the margin for clock skew and slow calls that keeps two
# runners from ever overlapping.
OUTAGE_STOP_FRACTION = 0.3  # database unreachable this long: the trainer checkpoints and stops
FENCE_FRACTION = 0.5  # the lease file the trainer obeys runs out here
# A transaction of ours left idle this long is ended by the server (api/core/db.py): we were stalled inside a
# fenced write, and the job row it locked must not block the reapers, nor the job's cancel past the API's 5-s
# response deadline (a 503 in place of the cancel). Our transactions never idle otherwise: no call waits in one.
IDLE_IN_TRANSACTION_S = 2.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 5.0
FIRST_SAMPLE_SECONDS = 1.0  # the first CPU/memory sample after launch; then one per heartbeat

# Set when the Celery worker begins a warm shutdown: the running job is checkpointed and handed back.
SHUTDOWN = threading.Event()

Enqueue = Callable[[int, str], None]
# The worker's GPUs and which its running jobs hold; set by `python -m worker` (none: a CPU worker).
DEVICE_SLOTS = DeviceSlots([])
T = TypeVar("T")


class Outcome(enum.Enum):
    """Why the watch loop ended."""

    EXITED = "the trainer exited"
    CANCELLED = "a cancel was requested"
    PRUNED = "its sweep's pruner stopped it early"
    SHUTDOWN = "the worker is shutting down (or its cluster stops it)"
    OUTAGE = "the database was unreachable too long"
    LEASE_LOST = "the job is no longer ours: nothing more is written for it"


def how_it_ended(exit_code: int | None, *, finished: bool) -> str:
    """What the trainer did, in words: `finished`, its last step's checkpoint is on disk; otherwise what its
    exit code says (a log line must not claim a checkpoint it never saved, nor deny one it did)."""
    if exit_code == rundir.EXIT_OK:
        return "the trainer finished every step"
    if finished:
        return (
            f"the trainer had finished every step and saved its last checkpoint (then exit code {exit_code})"
        )
    if exit_code == rundir.EXIT_INTERRUPTED:
        return "the trainer saved a checkpoint and stopped"
    if exit_code == rundir.EXIT_FENCED:
        return "the trainer's lease ran out: it stopped without saving"
    if exit_code is not None and exit_code < 0:
        return f"the trainer was killed by signal {-exit_code} without saving"
    return f"the trainer exited with code {exit_code}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Database:
    """Each call in a session of its own; a failed call is logged once per outage and retried with backoff."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.backoff = BACKOFF_FIRST_S

    def call(self, operation: Callable[[Session], T], *, force: bool = False) -> T | None:
        """The operation's result; None when the database failed (or is backing off and `force` is not set)."""
        now = time.monotonic()
        if self.down_since is not None and now < self.retry_at and not force:
            return None
        try:
            with self.sessions() as session:
                result = operation(session)
        except SQLAlchemyError as error:
            if self.down_since is None:
                log.warning(
                    "job %s: database unreachable (%s); retrying", self.job_id, str(error).splitlines()[0]
                )
                self.down_since = now
            self.retry_at = now + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
            return None
        if self.down_since is not None:
            log.info("job %s: database back after %.1f s", self.job_id, now - self.down_since)
        self.down_since, self.backoff = None, BACKOFF_FIRST_S
        return result

    def until(self, operation: Callable[[Session], T], deadline: float) -> T | None:
        """Retry until the call succeeds or the monotonic deadline passes."""
        while True:
            result = self.call(operation, force=True)
            if result is not None or time.monotonic() >= deadline:
                return result
            time.sleep(self.backoff)


def runner_sessions(settings: Settings) -> sessionmaker[Session]:
    """The sessions a job's runner writes through (Celery worker or Slurm node): a transaction it leaves idle
    ends after IDLE_IN_TRANSACTION_S."""
    return session_factory(settings.resolved_database_url, idle_in_transaction_s=IDLE_IN_TRANSACTION_S)


def supervise(job_id: int, *, settings: Settings, enqueue: Enqueue) -> None:
    """Claim the first runnable job in queue order (whichever `job_id` woke us: a message is a wake-up) and run it. A database
    that is down at claim time is waited for, up to a lease: the message that woke us stays our job."""
    sessions = runner_sessions(settings)
    database = Database(sessions, job_id)
    name = worker_name()
    deadline = time.monotonic() + settings.lease_seconds
    slots = DEVICE_SLOTS
    if _run_gang(settings=settings, enqueue=enqueue, sessions=sessions, database=database, name=name):
        return

    def claim(session: Session) -> Claim | bool:
        won = state_machine.claim(
            session=session,
            worker=name,
            running_limit=settings.max_running_jobs,
            pool=settings.pool,
            free_devices=slots.free(),
        )
        return won or False

    with slots.claiming:  # this worker's other threads claim after us, and see the devices we took
        won = database.until(claim, deadline)
        if isinstance(won, Claim):
            slots.take(won.devices)
    if not isinstance(won, Claim):
        log.info("job %s: nothing to claim (taken, finished, cancelled, waiting or database down)", job_id)
        return
    devices = f" on devices {','.join(map(str, won.devices))}" if won.devices else ""
    log.info("job %s: claimed, attempt %s of %s%s", won.job_id, won.attempt, won.max_attempts, devices)
    try:
        with job_context(won.job_id):  # every line logged while running it carries its id
            Run(
                claim=won, settings=settings, enqueue=enqueue, database=Database(sessions, won.job_id)
            ).execute()
    finally:
        slots.give_back(won.devices)


def _run_gang(
    *, settings: Settings, enqueue: Enqueue, sessions: sessionmaker[Session], database: Database, name: str
) -> bool:
    """Join the first multi-node job of the pool that fits, and run this node's part once its gang starts.
    False when there was no such job or its gang did not start with us (the caller claims a one-node job)."""
    slots = DEVICE_SLOTS
    pool = settings.pool

    def first_gang_job(session: Session) -> tuple[int, int] | None:
        return gangs.first_gang_job(session=session, pool=pool, free_devices=slots.free())

    # Looked at before taking the claim lock, so one-node claims wait for no extra query (nor change order).
    if database.call(first_gang_job) is None:
        return False
    with slots.claiming:
        first = database.call(first_gang_job)
        if first is None:
            return False
        job_id, gpus = first
        free = slots.free()
        devices = list(free[:gpus]) if free is not None else []
        slots.take(devices)
    try:
        place = gang.form(
            sessions=sessions,
            job_id=job_id,
            worker=name,
            settings=settings,
            devices=devices,
            wake_others=lambda others: _wake(enqueue, job_id, pool, others),
        )
        if place is None:
            return False
        log.info("job %s: gang started; this worker is node %s", job_id, place.node_rank)
        database = Database(sessions, job_id)
        Run(
            claim=place.gang.claim, settings=settings, enqueue=enqueue, database=database, node=place
        ).execute()
        return True
    finally:
        slots.give_back(devices)


def _wake(enqueue: Enqueue, job_id: int, pool: str, count: int) -> None:
    for _ in range(count):
        enqueue(job_id, pool)


@dataclass
class Run:
    claim: Claim
    settings: Settings
    enqueue: Enqueue
    database: Database
    node: NodePlace | None = None  # this node's place when the job runs on several (worker/placement.py)
    ignore_signals: tuple[int, ...] = ()  # signals the trainer must not die of (Slurm's --signal, for us)
    run_dir: Path = field(init=False)
    reader: rundir.MetricsReader = field(init=False)
    history_started: bool = False
    checkpoints_seen: list[rundir.CheckpointInfo] | None = None
    pending: list[rundir.MetricPoint] = field(default_factory=list)
    renewed_at: float = field(default_factory=time.monotonic)  # the last renewal the database confirmed
    pruning: search.Pruning | None = None  # a searching sweep's child with early stopping: its reports
    pruned: bool = False  # the pruner said stop
    # System samples (worker/usage.py) wait here until the attempt's history has begun: its start clears the rows.
    samples: list[rundir.MetricPoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = self.settings.run_dir(self.claim.job_id)
        self.reader = rundir.MetricsReader(self.run_dir)

    @property
    def job_id(self) -> int:
        return self.claim.job_id

    # ------------------------------------------------------------------------------------------- lifecycle
    def execute(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._leads() and rundir.run_complete(self.run_dir, self.claim.spec.train.steps):
            self._record_complete_run()
            return
        try:
            spec = self._trainer_spec()
        except SpecError as error:
            self._finish(JobStatus.failed, error=str(error))
            return
        spec_path = self.run_dir / rundir.SPEC_FILE
        rundir.write_json(spec_path, spec.model_dump(mode="json"))
        if self._leads():
            # A hand-back gives the attempt number back: the next run of the job has the same number, and the
            # record of where the last run's trainer resumed must not pass for this one's.
            rundir.attempt_path(self.run_dir, self.claim.attempt).unlink(missing_ok=True)
        self._renew_lease_file()
        if self._leads():
            url = self.settings.resolved_database_url
            self.pruning = self.database.call(
                lambda s: search.Pruning.of(session=s, url=url, job_id=self.job_id)
            )
        # Another node's launcher logs to a file of its own: appends from two machines to one file on NFS mix.
        log_name = (
            rundir.LOG_FILE if self._leads() else f"train-node-{self.node.node_rank if self.node else 0}.log"
        )
        log_path = self.run_dir / log_name
        log_start = self._write_log_header(log_path)
        procs = spec.resources.procs_per_node
        command = trainer_command(spec_path, self.run_dir, procs, attempt=self.claim.attempt)
        if self.node is not None:
            if not self._gang_storage_shared():
                return
            command = self.node.trainer_command(
                spec_path, self.run_dir, procs, join_timeout_s=max(1, int(self.settings.lease_seconds))
            )
        devices = self.claim.devices if DEVICE_SLOTS.gpu_worker else None
        env = trainer_env(procs, devices, data_roots=[self.settings.resolved_data_dir])
        if self.node is not None:
            env = {**self.node.network_env(), **env}  # a setting of the worker's own wins
        # A working directory of its own; signals the trainer must not die of (Slurm's SIGUSR1 is the supervisor's).
        trainer = Trainer(
            command,
            env,
            log_path,
            cwd=self.run_dir,
            ignore_signals=self.ignore_signals,
            log_limit=self._log_limit(),
        )
        try:
            outcome = self._watch(trainer)
        except BaseException:
            # Whatever broke the loop, the trainer must not run on unsupervised.
            trainer.kill()
            raise
        exit_code = trainer.poll()
        # Judged by the run directory, not the exit code alone: a stop (a cancel, the fence's kill) may reach a
        # trainer after its last checkpoint, while it exits.
        finished = exit_code == rundir.EXIT_OK or rundir.run_complete(self.run_dir, spec.train.steps)
        log.info("job %s: %s; %s", self.job_id, outcome.value, how_it_ended(exit_code, finished=finished))
        if outcome == Outcome.LEASE_LOST:
            return
        if not self._leads():  # rank 0's supervisor ends the job; another node only ends a failed attempt
            # 75: the ranks agreed to stop (a cancel or a stop that rank 0's supervisor handles), not a failure.
            if exit_code not in (rundir.EXIT_OK, rundir.EXIT_INTERRUPTED):
                tail, trainer_exit = trainer.tail(log_start)
                self._fail_gang_attempt(f"its trainers exited with code {trainer_exit or exit_code}:\n{tail}")
            return
        # After an outage the last renewal is old: what is on disk still goes in, for as long as a lease.
        self._catch_up(late=outcome == Outcome.OUTAGE)
        if finished:
            # Finished every step, even when a cancel or a stop came too late to interrupt it: the work is done.
            self._finish(JobStatus.succeeded)
        elif outcome == Outcome.CANCELLED:
            self._finish(JobStatus.cancelled)
        elif outcome == Outcome.PRUNED:
            self._finish(JobStatus.pruned)
        elif outcome in (Outcome.SHUTDOWN, Outcome.OUTAGE) or exit_code == rundir.EXIT_FENCED:
            self._hand_back(late=outcome == Outcome.OUTAGE)
        else:
            tail, trainer_exit = trainer.tail(log_start)
            self._failed(trainer_exit if trainer_exit is not None else exit_code, tail)

    def _record_complete_run(self) -> None:
        """An earlier attempt's trainer finished every step, but its runner lost the job before it could say so
        (it stalled past the lease, or the database was away when it ended): store what is on disk and succeed
        without starting a trainer. Finished work is not run again, and no further attempt is used for it."""
        steps = self.claim.spec.train.steps
        log_path = self.run_dir / rundir.LOG_FILE
        self._write_log_header(log_path)
        deadline = self.renewed_at + self.settings.lease_seconds * FENCE_FRACTION
        # Its last trainer may still be exiting, or be frozen between its last save and the pruning of older
        # checkpoints: read the directory once that trainer is gone, as a successor trainer would.
        with rundir.trainer_lock(self.run_dir, keep_waiting=lambda: time.monotonic() < deadline) as locked:
            if not locked:
                log.info("job %s: the run is complete but its last trainer still holds it", self.job_id)
                self._hand_back()
                return
            with log_path.open("a") as log_file:
                log_file.write(
                    f"the run is already complete at step {steps}: recorded as succeeded, nothing trained\n"
                )
            log.info(
                "job %s: the run is already complete at step %s; recording it, no trainer", self.job_id, steps
            )
            begun = self.database.until(
                lambda s: fenced_writes.start_history(session=s, claim=self.claim, resumed_from_step=steps),
                deadline,
            )
            if not begun:
                log.warning("job %s: lost before its complete run could be recorded", self.job_id)
                return
            self.history_started = (
                True  # metrics.jsonl holds every step once: its trainers cut it back on resume
            )
            self._catch_up()
        self._finish(JobStatus.succeeded)

    def _trainer_spec(self) -> JobSpec:
        """The stored spec, with init.from_job replaced by the parent's checkpoint directory."""
        spec = self.claim.spec
        if spec.resources.nodes != 1 and self.node is None:
            raise SpecError("multi-node jobs are not supported: this worker runs resources.nodes = 1")
        init = spec.init
        if init is None or init.from_job is None:
            return spec
        parent, wanted = init.from_job, init.checkpoint
        name = self.database.until(
            lambda s: fenced_writes.parent_checkpoint(session=s, job_id=parent, name=wanted) or "",
            time.monotonic() + self.settings.lease_seconds * OUTAGE_STOP_FRACTION,
        )
        if not name:
            raise SpecError(
                f"init.from_job: job {parent} has no {f'checkpoint {wanted!r}' if wanted else 'checkpoint'}"
            )
        weights = self.settings.run_dir(parent) / rundir.CHECKPOINTS_DIR / name
        new_init = init.model_copy(update={"from_job": None, "checkpoint": None, "weights": str(weights)})
        return spec.model_copy(update={"init": new_init}).resolved()

    def _log_limit(self) -> int | None:
        """The job owner's max_log_bytes; this worker's setting while the database cannot say."""
        settings = self.settings
        found = self.database.call(
            lambda s: (limits.log_limit(session=s, job_id=self.job_id, settings=settings),)
        )
        return found[0] if found is not None else settings.max_log_bytes

    def _leads(self) -> bool:
        """True on a one-node job, and on a gang's rank-0 node: the supervisor that writes the job's rows."""
        return self.node is None or self.node.node_rank == 0

    def _gang_storage_shared(self) -> bool:
        """Rank 0 leaves a token in the run directory; every other node must read it before it launches."""
        assert self.node is not None
        if self._leads():
            gang.write_storage_token(self.run_dir, self.node)
            return True
        error = gang.check_shared_storage(self.run_dir, self.node)
        if error is None:
            return True
        log.error("job %s: %s", self.job_id, error)
        self._fail_gang_attempt(error)
        return False

    def _fail_gang_attempt(self, error: str) -> None:
        assert self.node is not None
        place = self.node
        if self._final(lambda s: place.fail_attempt(session=s, error=error), "requeued"):
            self._enqueue()

    def _write_log_header(self, log_path: Path) -> int:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        node = f" node {self.node.node_rank}" if self.node is not None else ""
        header = f"=== {stamp} attempt {self.claim.attempt} on {worker_name()}{node} ===\n"
        with log_path.open("a") as log_file:
            log_file.write(header)
            return log_file.tell()

    # ------------------------------------------------------------------------------------------- watching
    def _watch(self, trainer: Trainer) -> Outcome:
        lease = self.settings.lease_seconds
        heartbeat_at = 0.0
        tree = usage.ProcessTree(trainer.process.pid)
        tree.sample()  # primes the CPU counters: the first stored sample measures from the launch
        sample_at = time.monotonic() + FIRST_SAMPLE_SECONDS
        stopping: Outcome | None = None
        stop_sent = 0.0
        while True:
            exited = trainer.poll() is not None
            now = time.monotonic()
            if not self._follow():
                trainer.kill()
                return Outcome.LEASE_LOST
            if now - heartbeat_at >= self.settings.heartbeat_seconds or exited:
                heartbeat_at = now
                renewed = self.database.call(self._renew)
                if renewed is not None:
                    held, cancel = renewed
                    if not held:
                        trainer.kill()
                        return Outcome.LEASE_LOST
                    self.renewed_at = now
                    self._renew_lease_file()
                    if cancel and stopping is None:
                        stopping = Outcome.CANCELLED
            if exited:
                return stopping or Outcome.EXITED
            if now >= sample_at:
                sample_at = now + self.settings.heartbeat_seconds
                self._sample(tree)
            unrenewed = now - self.renewed_at
            if unrenewed > lease * FENCE_FRACTION:
                trainer.kill()  # it has fenced itself by now, or is stuck: either way someone may take the job
                # A stop ordered for an outage still ends in a hand-back, however long the trainer took to exit:
                # the hand-back is fenced, so trying it late is safe (it lands only while the job is ours).
                return Outcome.OUTAGE if stopping == Outcome.OUTAGE else Outcome.LEASE_LOST
            if stopping is None and unrenewed > lease * OUTAGE_STOP_FRACTION:
                stopping = Outcome.OUTAGE
            if stopping is None and SHUTDOWN.is_set():
                stopping = Outcome.SHUTDOWN
            if stopping is None and self.pruned:
                stopping = Outcome.PRUNED
            if stopping is not None and not stop_sent:
                log.info("job %s: stopping the trainer (%s)", self.job_id, stopping.value)
                trainer.terminate()
                stop_sent = now
            elif stop_sent and now - stop_sent > STOP_GRACE_SECONDS:
                trainer.kill()
            time.sleep(POLL_SECONDS)

    def _sample(self, tree: usage.ProcessTree) -> None:
        """The trainer's CPU and memory, and its devices' (a GPU job), as the job's sys/* series at the current
        step. Rank 0's supervisor alone stores metrics: another node's tree is not sampled."""
        if not self._leads():
            return
        devices = self.claim.devices if DEVICE_SLOTS.gpu_worker else []
        gpus = usage.shared_nvml().read(devices) if devices else []
        self.samples += usage.job_points(tree.sample(), gpus, step=self._step(), at=time.time())

    def _renew(self, session: Session) -> tuple[bool, bool]:
        if self.node is None:
            return state_machine.renew(session=session, claim=self.claim, step=self._step())
        return self.node.renew(session=session, step=self._step())

    def _renew_lease_file(self) -> None:
        """Tell the trainer it may go on: until the fence, timed from the renewal the database confirmed (a
        renewal written late, after a stall, is already expired). A gang's lease file is its rank 0's."""
        if not self._leads():
            return
        elapsed = time.monotonic() - self.renewed_at
        valid_until = time.time() - elapsed + self.settings.lease_seconds * FENCE_FRACTION
        rundir.renew_lease(self.run_dir, self.claim.attempt, valid_until)

    def _follow(self) -> bool:
        """Move new metric points and checkpoint rows into the database; False once a write was refused (the
        job was taken from us). A database error only delays them. Rank 0's supervisor alone does this."""
        if not self._leads():
            return True
        if not self.history_started:
            started, resumed_from = rundir.attempt_started(self.run_dir, self.claim.attempt)
            if not started:
                return True
            begun = self.database.call(
                lambda s: fenced_writes.start_history(
                    session=s, claim=self.claim, resumed_from_step=resumed_from
                )
            )
            if begun is None:
                return True
            if not begun:
                return False
            self.history_started = True
        self.pending += self.samples
        self.samples = []
        while new := self.reader.read_new():
            self.pending.extend(new)
            if len(self.pending) >= 10_000 and not self._store_pending():
                return False
        if self.pending and not self._store_pending():
            return False
        found = rundir.scan_checkpoints(self.run_dir)
        if found != self.checkpoints_seen:
            stored = self.database.call(
                lambda s: fenced_writes.sync_checkpoints(session=s, claim=self.claim, found=found)
            )
            if stored is False:
                return False
            if stored:
                self.checkpoints_seen = found
        return True

    def _store_pending(self) -> bool:
        """Points read but not yet stored stay pending: an outage delays them, it does not drop them."""
        step = self.reader.last_step
        stored = self.database.call(
            lambda s: fenced_writes.add_metric_points(
                session=s, claim=self.claim, points=self.pending, step=step
            )
        )
        if stored:
            if self.pruning is not None and not self.pruned:
                self.pruned = self.pruning.report((p.name, p.step, p.value) for p in self.pending)
            self.pending = []
        return stored is not False

    def _catch_up(self, *, late: bool = False) -> None:
        """After the trainer exited: store what it wrote last, retrying while the lease lasts (`late`, after an
        outage: for a lease from now; the writes are fenced, so they land only while the job is still ours)."""
        start = time.monotonic() if late else self.renewed_at
        deadline = start + self.settings.lease_seconds * FENCE_FRACTION
        while time.monotonic() < deadline:
            if not self._follow() or (self.database.down_since is None and not self.pending):
                return
            time.sleep(self.database.backoff)

    def _step(self) -> int:
        """Steps done: the last metrics line, or a checkpoint saved after it (the one a stop request saves)."""
        saved = max((c.step for c in self.checkpoints_seen or []), default=0)
        return max(self.reader.last_step, saved)

    # ------------------------------------------------------------------------------------------- endings
    def _final(self, operation: Callable[[Session], bool], what: str, *, late: bool = False) -> bool:
        """A final transition, retried until the lease would run out (`late`: for a lease from now); False if it
        did not land."""
        deadline = (time.monotonic() if late else self.renewed_at) + self.settings.lease_seconds
        done = self.database.until(operation, deadline)
        if not done:
            log.warning("job %s: lost before it could be %s", self.job_id, what)
        return bool(done)

    def _finish(self, status: JobStatus, error: str | None = None) -> None:
        step = self._step() or None
        if self._final(
            lambda s: state_machine.finish(
                session=s, claim=self.claim, status=status, error=error, step=step
            ),
            f"marked {status.value}",
        ):
            self._next_trials()

    def _next_trials(self) -> None:
        """A searching sweep's child ended: tell its study and ask for the next children now (the reaper would
        within a pass; this is only sooner). Never fails the job that ended."""
        sweep_id = self.database.call(lambda s: search.sweep_of(session=s, job_id=self.job_id))
        if not sweep_id:
            return
        try:
            made = search.top_up(
                sessions=self.database.sessions,
                url=self.settings.resolved_database_url,
                sweep_id=sweep_id,
                max_attempts=self.settings.max_attempts,
                settings=self.settings,
            )
        except Exception as error:
            log.warning(
                "sweep %s: could not ask for its next children (%s); the reaper will", sweep_id, error
            )
            return
        for job_id, pool in made:
            try:
                self.enqueue(job_id, pool)
            except Exception as error:  # the broker may be down: the reaper sends a wake-up when it is back
                log.warning("job %s: could not enqueue (%s); the reaper will", job_id, error)

    def _hand_back(self, *, late: bool = False) -> None:
        """Back to the queue without using up an attempt (a deploy, an outage or a stall did not fail it)."""
        if self._final(
            lambda s: state_machine.release(session=s, claim=self.claim, count_attempt=False),
            "handed back",
            late=late,
        ):
            self._enqueue()

    def _failed(self, exit_code: int | None, tail: str) -> None:
        attempt, max_attempts = self.claim.attempt, self.claim.max_attempts
        error = f"trainer exited with code {exit_code} (attempt {attempt} of {max_attempts})"
        error = f"{error}:\n{tail}" if tail else error
        if exit_code == rundir.EXIT_BAD_INPUT or attempt >= max_attempts:
            self._finish(JobStatus.failed, error=error)
        elif self._final(
            lambda s: state_machine.release(session=s, claim=self.claim, error=error), "requeued"
        ):
            log.info("job %s: attempt %s failed; queued again", self.job_id, attempt)
            self._enqueue()

    def _enqueue(self) -> None:
        try:
            self.enqueue(self.job_id, self.claim.spec.resources.pool)
        except Exception as error:  # the broker may be down: the reaper sends a wake-up when it is back
            log.warning("job %s: could not enqueue (%s); the reaper will", self.job_id, error)
