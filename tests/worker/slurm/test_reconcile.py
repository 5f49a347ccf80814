"""The dispatcher's judgement of a run that ended without its supervisor, from what Slurm left of it, against a
real database: a preemption costs no attempt even when the run could not hand the job back first (its checkpoint
outlasted GraceTime or KillWait, and Slurm's SIGKILL came before the hand-back), anything else costs one.

test_slurm.py drives these paths on a live cluster where Slurm can be made to produce them on demand; a run too
slow to stop cannot be (Slurm sends SIGCONT before its SIGTERM, so a stopped process wakes up and hands back), so
here Slurm's observations are given as this cluster writes them: squeue's state and reason, and the output file
the run left (the slurmstepd lines are copied from a preemption on tests/worker/slurm/cluster.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api.core import launches, state_machine
from api.core.db import make_engine
from api.core.migrate import upgrade
from api.core.models import Job, JobStatus
from api.core.settings import Settings
from vit.config import JobSpec
from worker.slurm.batch import PoolConfig
from worker.slurm.commands import RUN_MARK, SlurmJob
from worker.slurm.dispatcher import CANCEL_SETTLE_S, Dispatcher

POOL = "hpc"
PREEMPTED = """\
{mark} {id} run 0 on n1
srun: Job step aborted: Waiting up to 12 seconds for job step to finish.
slurmstepd-n1: error: *** JOB {id} ON n1 CANCELLED AT 2026-12-06T18:12:12 DUE TO PREEMPTION ***
slurmstepd-n1: error: *** STEP {id}.0 ON n1 CANCELLED AT 2026-12-06T18:12:12 DUE TO PREEMPTION ***
srun: got SIGCONT
srun: forcing job termination
"""
NODE_FAILURE = """\
{mark} {id} run 1 on n1
srun: error: Node failure on n2
srun: Job step aborted: Waiting up to 12 seconds for job step to finish.
"""


@pytest.fixture
def dispatcher(tmp_path: Path, redis_url: str, unique_queue: str) -> Dispatcher:
    """A dispatcher of pool POOL on a migrated database of its own (2 attempts per job)."""
    settings = Settings(home=tmp_path, broker_url=redis_url, queue=unique_queue, max_attempts=2)
    upgrade(settings.resolved_database_url)
    return Dispatcher(settings=settings, config=PoolConfig(pool=POOL, partition="batch"))


def queued_job(settings: Settings) -> int:
    """A queued job of the pool, not launched yet."""
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        spec = JobSpec.model_validate({"kind": "pretrain", "resources": {"pool": POOL}})
        submitted = state_machine.submit(session=session, spec=spec, max_attempts=2, parent=None)
        session.commit()
        job_id = submitted.id
    engine.dispose()
    return job_id


def launched_and_claimed(settings: Settings, slurm_id: str) -> Job:
    """A job of the pool launched as Slurm job `slurm_id`, whose node 0 claimed it. (No nodes are recorded: the
    dispatcher would ask this machine's Slurm for their state, and only the given words are to count.)"""
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        job_id = session.query(Job.id).filter(Job.pool == POOL).scalar()
        if job_id is None:
            spec = JobSpec.model_validate({"kind": "pretrain", "resources": {"pool": POOL}})
            job = state_machine.submit(session=session, spec=spec, max_attempts=2, parent=None)
            session.commit()
            job_id = job.id
        attempt = session.query(Job.attempt).filter(Job.id == job_id).scalar()
        ref = f"slurm:{slurm_id}"
        assert launches.record_launch(
            session=session, job_id=job_id, attempt=attempt, executor_ref=ref, note=""
        )
        claim = state_machine.claim_job(
            session=session,
            job_id=job_id,
            worker=f"n1:slurm-{slurm_id}",
            executor_ref=ref,
            nodes=("n1", "n2"),
        )
        assert claim is not None
        found = session.get(Job, job_id, populate_existing=True)
        assert found is not None
        session.expunge(found)
    engine.dispose()
    return found


def reconcile(dispatcher: Dispatcher, slurm: SlurmJob) -> Job:
    """One look at the pool's launched job as the dispatcher takes it, with Slurm saying `slurm` of its job."""
    with dispatcher.sessions() as session:
        [launch] = launches.launches(session=session, pool=POOL, prefix="slurm:")
        dispatcher._reconcile(session, launch, slurm)
        job = session.get(Job, launch.job_id, populate_existing=True)
        assert job is not None
        session.expunge(job)
        return job


def test_a_preemption_costs_no_attempt_even_without_a_hand_back_and_a_node_failure_costs_one(
    dispatcher: Dispatcher,
) -> None:
    settings = dispatcher.settings

    first = launched_and_claimed(settings, "8")
    assert (first.status, first.attempt) == (JobStatus.running, 1)
    run_dir = settings.run_dir(first.id)
    run_dir.mkdir(parents=True)
    (run_dir / "slurm-8.out").write_text(PREEMPTED.format(mark=RUN_MARK, id=8))
    # Slurm requeued its preempted job at once (no GraceTime) and killed the run before it handed the job back.
    preempted = reconcile(dispatcher, SlurmJob("8", f"vitq-{first.id}", "PENDING", "BeginTime", ""))
    assert (preempted.status, preempted.attempt, preempted.executor_ref) == (JobStatus.queued, 0, None)
    assert preempted.error is not None and preempted.error.startswith(
        "Slurm job 8 was requeued by Slurm (slurmstepd-n1: error: *** JOB 8 ON n1 CANCELLED AT "
    )
    assert "DUE TO PREEMPTION" in preempted.error and preempted.error.endswith("while attempt 1 of 2 ran")

    # Launched again as Slurm job 9: preempted in its first run, then in its second run a node failed. Only the
    # second run's words count: that attempt is charged, and with it the job used its last attempt but one.
    second = launched_and_claimed(settings, "9")
    assert second.attempt == 1  # the preempted attempt was given back
    (run_dir / "slurm-9.out").write_text(
        PREEMPTED.format(mark=RUN_MARK, id=9) + NODE_FAILURE.format(mark=RUN_MARK, id=9)
    )
    failed_node = reconcile(dispatcher, SlurmJob("9", f"vitq-{first.id}", "PENDING", "BeginTime", ""))
    assert (failed_node.status, failed_node.attempt, failed_node.executor_ref) == (JobStatus.queued, 1, None)
    assert failed_node.error == (
        "Slurm job 9 was requeued by Slurm (srun: error: Node failure on n2) while attempt 1 of 2 ran"
    )

    # The last attempt, lost to a job Slurm ended FAILED: the job fails with Slurm's words.
    launched_and_claimed(settings, "10")
    (run_dir / "slurm-10.out").write_text(
        f"{RUN_MARK} 10 run 0 on n1\nslurmstepd-n1: error: StepId=10.0 exceeded memory limit (5 > 4), being killed\n"
    )
    last = reconcile(dispatcher, SlurmJob("10", f"vitq-{first.id}", "FAILED", "NonZeroExitCode", "n1"))
    assert last.status == JobStatus.failed and last.attempt == 2
    assert last.error == (
        "Slurm job 10 ended FAILED (NonZeroExitCode; slurmstepd-n1: error: StepId=10.0 exceeded memory limit "
        "(5 > 4), being killed) while attempt 2 of 2 ran"
    )


def test_a_slurm_job_that_fails_before_its_run_claims_the_job_costs_an_attempt(
    dispatcher: Dispatcher,
) -> None:
    # The node's supervisor never got to claim the job (it could not start, or Slurm killed it first): without
    # a charge the dispatcher would launch the job again, and again, forever.
    settings = dispatcher.settings
    job_id = queued_job(settings)
    run_dir = settings.run_dir(job_id)
    run_dir.mkdir(parents=True)
    for slurm_id, attempt in (("21", 0), ("22", 1)):
        with dispatcher.sessions() as session:
            assert launches.record_launch(
                session=session, job_id=job_id, attempt=attempt, executor_ref=f"slurm:{slurm_id}", note=""
            )
        (run_dir / f"slurm-{slurm_id}.out").write_text(
            f"{RUN_MARK} {slurm_id} run 0 on n1\n/usr/bin/python3: No module named worker.slurm.node\n"
            f"srun: error: n1: task 0: Exited with exit code 1\n"
        )
        job = reconcile(dispatcher, SlurmJob(slurm_id, f"vitq-{job_id}", "FAILED", "NonZeroExitCode", "n1"))
        assert job.error == (
            f"Slurm job {slurm_id} ended FAILED (NonZeroExitCode; srun: error: n1: task 0: Exited with exit code 1)"
        )
        if attempt == 0:  # charged, and launched again as a new Slurm job
            assert (job.status, job.attempt, job.executor_ref) == (JobStatus.queued, 1, None)
    assert (job.status, job.attempt) == (JobStatus.failed, 1)  # the second was its last


def test_a_cancel_without_a_preemptions_words_is_charged_only_once_it_has_stayed_so(
    dispatcher: Dispatcher,
) -> None:
    # A preemption reads CANCELLED at times, and on a loaded node slurmstepd's "DUE TO PREEMPTION" line may reach
    # the output file after the run handed the job back: the first look at such a job decides nothing.
    settings = dispatcher.settings
    job_id = queued_job(settings)
    run_dir = settings.run_dir(job_id)
    run_dir.mkdir(parents=True)

    def launched(slurm_id: str) -> None:
        with dispatcher.sessions() as session:
            assert launches.record_launch(
                session=session, job_id=job_id, attempt=0, executor_ref=f"slurm:{slurm_id}", note=""
            )
        (run_dir / f"slurm-{slurm_id}.out").write_text(f"{RUN_MARK} {slurm_id} run 0 on n1\n")

    def cancelled(slurm_id: str) -> Job:
        return reconcile(dispatcher, SlurmJob(slurm_id, f"vitq-{job_id}", "CANCELLED", "None", "n1"))

    launched("31")
    assert (cancelled("31").attempt, cancelled("31").executor_ref) == (0, "slurm:31")  # not judged yet
    (run_dir / "slurm-31.out").write_text(PREEMPTED.format(mark=RUN_MARK, id=31))
    preempted = cancelled("31")
    assert (preempted.status, preempted.attempt, preempted.executor_ref) == (JobStatus.queued, 0, None)

    launched("32")  # an scancel from outside vitq: CANCELLED it stays, with no word of a preemption
    assert cancelled("32").executor_ref == "slurm:32"
    dispatcher.cancel_seen["32"] -= CANCEL_SETTLE_S
    charged = cancelled("32")
    assert (charged.status, charged.attempt, charged.executor_ref) == (JobStatus.queued, 1, None)
    assert charged.error == "Slurm job 32 was cancelled outside vitq (scancel)"


def test_a_run_requeued_without_a_word_why_is_judged_once_it_has_stayed_so(dispatcher: Dispatcher) -> None:
    # Slurm requeued the job under its running run, and slurmstepd's "DUE TO PREEMPTION" line has not reached the
    # output file yet (a loaded node): the first look decides nothing, the line decides when it comes.
    settings = dispatcher.settings
    job = launched_and_claimed(settings, "51")
    out = settings.run_dir(job.id) / "slurm-51.out"
    out.parent.mkdir(parents=True)
    out.write_text(f"{RUN_MARK} 51 run 0 on n1\n")
    requeued = SlurmJob("51", f"vitq-{job.id}", "PENDING", "BeginTime", "")
    assert reconcile(dispatcher, requeued).status == JobStatus.running
    out.write_text(PREEMPTED.format(mark=RUN_MARK, id=51))
    preempted = reconcile(dispatcher, requeued)
    assert (preempted.status, preempted.attempt, preempted.executor_ref) == (JobStatus.queued, 0, None)

    # Requeued again, and no word ever comes: once that has held for the settle time, the attempt is charged.
    job = launched_and_claimed(settings, "52")
    (settings.run_dir(job.id) / "slurm-52.out").write_text(f"{RUN_MARK} 52 run 0 on n1\n")
    requeued = SlurmJob("52", f"vitq-{job.id}", "PENDING", "BeginTime", "")
    assert reconcile(dispatcher, requeued).status == JobStatus.running
    dispatcher.cancel_seen["52"] -= CANCEL_SETTLE_S
    charged = reconcile(dispatcher, requeued)
    assert (charged.status, charged.attempt, charged.executor_ref) == (JobStatus.queued, 1, None)
    assert charged.error == "Slurm job 52 was requeued by Slurm while attempt 1 of 2 ran"


def test_a_run_slurm_ended_at_its_time_limit_before_it_handed_back_costs_no_attempt(
    dispatcher: Dispatcher,
) -> None:
    # SIGUSR1 came before the limit, but on a loaded node the run had not handed the job back when Slurm killed
    # it (TIMEOUT): the continuation is planned, as a preemption is, so no attempt is spent.
    settings = dispatcher.settings
    job = launched_and_claimed(settings, "41")
    settings.run_dir(job.id).mkdir(parents=True)
    (settings.run_dir(job.id) / "slurm-41.out").write_text(f"{RUN_MARK} 41 run 0 on n1\n")
    ended = reconcile(dispatcher, SlurmJob("41", f"vitq-{job.id}", "TIMEOUT", "TimeLimit", "n1"))
    assert (ended.status, ended.attempt, ended.executor_ref) == (JobStatus.queued, 0, None)
