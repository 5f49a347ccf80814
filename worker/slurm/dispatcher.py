"""The Slurm dispatcher of one pool: a loop on a login node that holds no allocation.

Each pass: publish the partition's nodes in the worker registry (the API refuses a job no node could run from
them), requeue jobs whose runners stopped renewing (the reaper's work, which no Celery worker of this pool
does), reconcile every launched job with what Slurm says of its Slurm job, cancel Slurm jobs vitq no longer
wants, and sbatch the pool's runnable jobs in queue order (at most `max_pending` waiting in Slurm at once, so
vitq's order still decides among the rest).

What Slurm says, and what it does to the job (docs/slurm.md):
- pending: the job stays queued; its wait_reason is Slurm's reason with the Slurm job id.
- ended (COMPLETED, TIMEOUT, CANCELLED, ...) or requeued by Slurm while vitq has the job queued (its supervisor
  handed it back: a wall-time limit, a stop, a preemption): the launch is forgotten and the job is submitted
  again, resuming from its checkpoint. CANCELLED from outside vitq, FAILED and the like cost an attempt.
- ended, or back to pending (Slurm requeued it: a node failure, a preemption), while vitq has the job running:
  the supervisor died with the attempt. The job is requeued with Slurm's words (its reason, the run's lines in
  the output file, the nodes' state) in `error`, at no cost after a preemption, else for an attempt (failed once
  out of attempts), and submitted again as a new Slurm job.
- alive while vitq has finished the job, cancelled it, or moved it to another launch: scancel.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import threading
import time
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.core import launches, state_machine, workers
from api.core.broker import JobQueue
from api.core.db import session_factory
from api.core.models import Job, JobStatus, Worker
from api.core.settings import Settings
from vit.config import JobSpec, megabytes
from worker import left_on_disk
from worker.slurm import batch, commands
from worker.slurm.batch import PoolConfig

log = logging.getLogger(__name__)

PREFIX = "slurm:"
NODES_EVERY_S = 30.0  # how often the partition's nodes are read again
# A Slurm job read CANCELLED with no word of a preemption yet, or requeued under a running vitq job with no word
# of why, is charged only once it has stayed so this long: a preemption reads so too, before slurmstepd's "DUE TO
# PREEMPTION" line reaches the output file (on a loaded node, after Slurm requeued the job, or after the run
# already handed the job back). A node Slurm reports down, or srun's word of its failure, is charged at once.
CANCEL_SETTLE_S = 6.0
LINGER_S = 20.0  # how long a finished job's running Slurm job may take to end before it is scancelled
CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout the batch script imports vitq from
# How a Slurm job of a queued vitq job may end that costs the job an attempt (a hand-back ends COMPLETED, or
# TIMEOUT when the wall-time limit came first; nothing of those failed).
CHARGED_WHILE_QUEUED = frozenset({"CANCELLED", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"})


class Dispatcher:
    def __init__(self, *, settings: Settings, config: PoolConfig, max_pending: int = 64) -> None:
        self.settings = settings
        self.config = config
        self.max_pending = max_pending
        self.sessions = session_factory(settings.resolved_database_url)
        self.user = getpass.getuser()
        self.nodes_read_at = -NODES_EVERY_S
        self.cancelled: set[str] = set()  # Slurm jobs this dispatcher already scancelled
        self.finished_seen: dict[str, float] = {}  # running Slurm jobs of finished vitq jobs: first seen
        # Slurm jobs read CANCELLED, or requeued under a running vitq job, without Slurm's word why: first seen
        self.cancel_seen: dict[str, float] = {}
        self.refused: dict[int, str] = {}  # jobs sbatch refused for a passing reason: logged once
        self.broker = JobQueue(settings)  # the API wakes every pool's workers; here nobody listens: drop them

    # ------------------------------------------------------------------------------------------- one pass
    def run_once(self) -> None:
        try:
            self.broker.purge(self.config.pool)
        except Exception as error:  # the broker away: the wake-ups wait for the next pass
            log.warning("could not drop the pool's broker messages (%s)", error)
        with self.sessions() as session:
            self._publish_nodes(session)
            ended: list[int] = []
            for job_id in state_machine.requeue_stale(
                session=session, lease_seconds=self.settings.lease_seconds, ended=ended
            ):
                log.warning("job %s: its runner stopped renewing the lease; queued again", job_id)
            for job_id in ended:  # its runner is gone: what it left on the shared storage is recorded here
                left_on_disk.record(session=session, job_id=job_id, run_dir=self.settings.run_dir(job_id))
            state_machine.release_waiting_children(session=session)
            # vitq's view first, Slurm's after: a job vitq saw running that Slurm then reports pending or ended
            # really lost its attempt (read the other way round, a claim in between would look lost).
            known = launches.launches(session=session, pool=self.config.pool, prefix=PREFIX)
            try:
                slurm_jobs = commands.jobs(self.user, batch.NAME_PREFIX)
            except commands.SlurmError as error:
                log.warning("squeue failed (%s); trying again next pass", error)
                return
            for launch in known:
                self._reconcile(session, launch, slurm_jobs.get(launch.executor_ref.removeprefix(PREFIX)))
            self._cancel_unwanted(session, slurm_jobs)
            pending = sum(1 for j in slurm_jobs.values() if j.state == "PENDING")
            self._launch(session, max(0, self.max_pending - pending))

    def _reconcile(self, session: Session, launch: launches.Launch, slurm: commands.SlurmJob | None) -> None:
        ref, slurm_id = launch.executor_ref, launch.executor_ref.removeprefix(PREFIX)
        if launch.status == JobStatus.queued:
            self._reconcile_queued(session, launch, slurm)
            return
        # Running in vitq.
        if launch.cancel_requested and slurm is not None and not slurm.over:
            self._scancel(slurm_id, f"job {launch.job_id} was cancelled")
        if slurm is not None and not slurm.over and slurm.state != "PENDING":
            return
        # The run ended (or Slurm requeued it) without its supervisor: the attempt is lost. A preemption costs
        # nothing, whether or not the supervisor had time to hand the job back; anything else costs an attempt.
        how = (
            "is gone" if slurm is None else f"ended {slurm.state}" if slurm.over else "was requeued by Slurm"
        )
        words, preempted = self._slurms_words(launch, slurm)
        taken_away = slurm is not None and slurm.state in ("PENDING", "CANCELLED")
        if taken_away and not words and not self._settled(slurm_id):
            return  # no word of why yet (a preemption's may be on its way to the output file): a later pass
        reason = f" ({'; '.join(words)})" if words else ""
        lost = (
            f"Slurm job {slurm_id} {how}{reason} while attempt {launch.attempt} of {launch.max_attempts} ran"
        )
        where = (
            Job.id == launch.job_id,
            Job.status == JobStatus.running,
            Job.attempt == launch.attempt,
            Job.executor_ref == ref,
        )
        queued = state_machine.requeue(
            session=session,
            job_id=launch.job_id,
            attempt=launch.attempt,
            max_attempts=launch.max_attempts,
            where=where,
            lost=lost,
            charge=not preempted,
        )
        session.commit()
        cost = "at no cost (preempted)" if preempted else "an attempt"
        log.warning(
            "job %s: %s; %s", launch.job_id, lost, f"queued again, {cost}" if queued else "not requeued"
        )
        if queued:  # a new Slurm job, in vitq's queue order; the old one, if Slurm requeued it, is scancelled
            launches.forget_launch(session=session, job_id=launch.job_id, executor_ref=ref)

    def _reconcile_queued(
        self, session: Session, launch: launches.Launch, slurm: commands.SlurmJob | None
    ) -> None:
        ref, slurm_id = launch.executor_ref, launch.executor_ref.removeprefix(PREFIX)
        if slurm is not None and slurm_id not in self.cancelled and slurm.state in CHARGED_WHILE_QUEUED:
            # Its run handed the job back at no cost, or never claimed it; Slurm's word on how the Slurm job
            # ended decides: an scancel from outside vitq, or a run that failed around the supervisor (the node
            # could not start it, a memory limit below the supervisor's own), costs an attempt, so a job that can
            # never start fails once out of attempts instead of being launched again forever. A preemption
            # Slurm reports as a cancel costs nothing.
            words, preempted = self._slurms_words(launch, slurm)
            if not preempted and slurm.state == "CANCELLED" and not self._settled(slurm_id):
                return  # maybe a preemption on its way to Slurm's requeue: decided on a later pass
            if not preempted:
                how = (
                    "was cancelled outside vitq (scancel)"
                    if slurm.state == "CANCELLED"
                    else f"ended {slurm.state}"
                )
                reason = f" ({'; '.join(words)})" if words and slurm.state != "CANCELLED" else ""
                self._charge(session, launch, f"Slurm job {slurm_id} {how}{reason}")
        if slurm is None or slurm.over or self._requeued_by_slurm(launch, slurm):
            # Ended, or requeued by Slurm after its run handed the job back (a preemption without GraceTime):
            # a new Slurm job, in vitq's queue order, rather than the old one after Slurm's requeue hold.
            if launches.forget_launch(session=session, job_id=launch.job_id, executor_ref=ref):
                state = "gone" if slurm is None else slurm.state if slurm.over else "requeued by Slurm"
                log.info(
                    "job %s: Slurm job %s ended (%s); launching it again", launch.job_id, slurm_id, state
                )
            return
        text = f"Slurm job {slurm_id} {slurm.state.lower()}: {slurm.reason}"
        if slurm.state != "PENDING":
            text = f"Slurm job {slurm_id} {slurm.state.lower()} on {slurm.nodes or '?'}: starting"
        if text != launch.executor_note:
            launches.note(session=session, job_id=launch.job_id, executor_ref=ref, text=text)

    def _settled(self, slurm_id: str) -> bool:
        first = self.cancel_seen.setdefault(slurm_id, time.monotonic())
        return time.monotonic() - first >= CANCEL_SETTLE_S

    def _charge(self, session: Session, launch: launches.Launch, error: str) -> None:
        """The attempt a queued job's last run gave back counts after all (failed once it was the last)."""
        total = f"{launch.attempt + 1} of {launch.max_attempts}"
        if state_machine.charge_attempt(
            session=session,
            job_id=launch.job_id,
            attempt=launch.attempt,
            executor_ref=launch.executor_ref,
            error=error,
        ):
            log.warning("job %s: %s (attempt %s); launching it again", launch.job_id, error, total)
        else:
            log.warning("job %s: %s (attempt %s): failed", launch.job_id, error, total)

    def _requeued_by_slurm(self, launch: launches.Launch, slurm: commands.SlurmJob) -> bool:
        """A pending Slurm job that already ran: Slurm requeued it (it holds such a job a while: BeginTime)."""
        if slurm.state != "PENDING" or slurm.reason != "BeginTime":
            return False
        return self._output_file(launch).exists()

    def _output_file(self, launch: launches.Launch) -> Path:
        slurm_id = launch.executor_ref.removeprefix(PREFIX)
        return self.settings.run_dir(launch.job_id) / f"slurm-{slurm_id}.out"

    def _slurms_words(
        self, launch: launches.Launch, slurm: commands.SlurmJob | None
    ) -> tuple[list[str], bool]:
        """Why Slurm ended or requeued the job's run, in its words (its reason, its messages in the output
        file, the state of the run's nodes), and whether Slurm took the run away (a preemption, or the wall-time
        limit before the run could hand the job back): that costs no attempt, as the planned stops do."""
        words = [slurm.reason] if slurm is not None and slurm.reason not in ("None", "", "BeginTime") else []
        messages = commands.run_messages(self._output_file(launch))
        try:
            words += commands.node_problems([n for n in launch.nodes if n])
        except commands.SlurmError as error:
            log.warning("could not read the state of nodes %s (%s)", ",".join(launch.nodes), error)
        words += messages
        preempted = (slurm is not None and slurm.state in ("PREEMPTED", "TIMEOUT")) or any(
            commands.PREEMPTION in m for m in messages
        )
        return words, preempted

    def _cancel_unwanted(self, session: Session, slurm_jobs: dict[str, commands.SlurmJob]) -> None:
        alive = {sid: j for sid, j in slurm_jobs.items() if not j.over and sid not in self.cancelled}
        job_ids = {sid: batch.job_of(j.name) for sid, j in alive.items()}
        known = launches.statuses(session=session, job_ids=[j for j in job_ids.values() if j is not None])
        for sid, job_id in job_ids.items():
            if job_id is None or job_id not in known:
                continue
            status, ref = known[job_id]
            if status.finished and self._lingers(sid, alive[sid]):
                self._scancel(sid, f"job {job_id} is {status.value}")
            elif ref != f"{PREFIX}{sid}":
                self._scancel(sid, f"job {job_id} is not this Slurm job's any more")

    def _lingers(self, slurm_id: str, slurm: commands.SlurmJob) -> bool:
        """A Slurm job of a finished vitq job is cancelled at once while it pends; one that runs gets
        LINGER_S to end by itself (its supervisors exit right after writing the final state)."""
        if slurm.state == "PENDING":
            return True
        first = self.finished_seen.setdefault(slurm_id, time.monotonic())
        return time.monotonic() - first > LINGER_S

    def _launch(self, session: Session, budget: int) -> None:
        if budget <= 0:
            return
        found = launches.unlaunched(
            session=session,
            pool=self.config.pool,
            limit=budget,
            running_limit=self.settings.max_running_jobs,
        )
        for job_id, spec, attempt in found:
            self._submit(session, job_id, spec, attempt)

    def _submit(self, session: Session, job_id: int, spec: JobSpec, attempt: int) -> None:
        run_dir = self.settings.run_dir(job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        options = batch.sbatch_options(job_id, spec, self.config, run_dir)
        try:
            slurm_id = commands.submit(options, batch.batch_script(job_id, spec, self.config, CODE_ROOT))
        except commands.SlurmError as error:
            if error.permanent:
                message = f"Slurm refused the job (sbatch {' '.join(options)}): {error}"
                if state_machine.fail_unlaunchable(
                    session=session, job_id=job_id, executor_ref=None, error=message
                ):
                    log.warning("job %s: %s", job_id, message)
            elif self.refused.get(job_id) != str(error):
                self.refused[job_id] = str(error)
                log.warning("job %s: sbatch failed (%s); trying again next pass", job_id, error)
            return
        self.refused.pop(job_id, None)
        ref = f"{PREFIX}{slurm_id}"
        note = f"Slurm job {slurm_id} submitted to partition {self.config.partition}"
        if launches.record_launch(
            session=session, job_id=job_id, attempt=attempt, executor_ref=ref, note=note
        ):
            log.info("job %s: submitted as Slurm job %s", job_id, slurm_id)
        else:  # cancelled (or launched by someone else) while sbatch ran
            self._scancel(slurm_id, f"job {job_id} changed while it was submitted")

    def _scancel(self, slurm_id: str, why: str) -> None:
        try:
            commands.cancel([slurm_id])
        except commands.SlurmError as error:
            log.warning("scancel %s failed (%s); trying again next pass", slurm_id, error)
            return
        self.cancelled.add(slurm_id)
        log.info("scancel %s: %s", slurm_id, why)

    # ------------------------------------------------------------------------------------------- registry
    def _publish_nodes(self, session: Session) -> None:
        """The partition's nodes as worker rows of the pool (re-read every NODES_EVERY_S, renewed each pass)."""
        pool, partition = self.config.pool, self.config.partition
        if time.monotonic() - self.nodes_read_at < NODES_EVERY_S:
            session.execute(
                update(Worker)
                .where(Worker.pool == pool, Worker.partition == partition)
                .values(heartbeat_at=state_machine.now())
            )
            session.commit()
            return
        try:
            found = commands.nodes(partition)
        except commands.SlurmError as error:
            log.warning("could not read partition %s's nodes (%s)", partition, error)
            return
        self.nodes_read_at = time.monotonic()
        # `device: auto` jobs ask for GPUs where the partition has them, as they would use a GPU worker's.
        self.config = dataclasses.replace(self.config, gpus=any(node.gpus for node in found))
        for node in found:
            workers.announce(
                session=session,
                name=node_worker_name(pool, node.name),
                host=node.name,
                pid=0,
                address=node.address,
                pool=pool,
                cpus=node.cpus,
                devices=[{"index": i, "name": "gpu", "memory_mb": 0} for i in range(node.gpus)],
                concurrency=1,
                partition=partition,
                memory_mb=node.memory_mb or None,
                cpus_per_task=self.config.cpus_per_task,
                memory_per_task_mb=megabytes(self.config.mem_per_task) if self.config.mem_per_task else None,
            )

    def retire(self) -> None:
        with self.sessions() as session:
            session.execute(
                update(Worker)
                .where(Worker.pool == self.config.pool, Worker.partition == self.config.partition)
                .values(stopped_at=state_machine.now())
            )
            session.commit()

    def run_forever(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("dispatcher: pass failed; trying again in %.0f s", interval)
            stop.wait(interval)


def node_worker_name(pool: str, node: str) -> str:
    return f"slurm:{pool}:{node}"
