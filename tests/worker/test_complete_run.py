"""A claim that finds its job's run complete on disk records it without a trainer (issue 23, item 18), once the
run's last trainer has let go of the directory: a real trainer's run directory, the supervisor's Run against
a real database, and a real process holding the trainer lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import state_machine
from api.core.db import make_engine, session_factory
from api.core.migrate import upgrade
from api.core.models import Checkpoint, Job, JobStatus, MetricPoint
from api.core.settings import Settings
from tests.e2e.stack import tiny_spec
from vit import rundir
from vit.config import JobSpec
from worker.supervisor import Database, Run

STEPS = 20


def test_a_complete_run_is_recorded_without_a_trainer_once_its_last_trainer_is_gone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, lease_seconds=2.0, heartbeat_seconds=0.5)
    upgrade(settings.resolved_database_url)
    spec = JobSpec.model_validate(tiny_spec(steps=STEPS, checkpoint_every=10)).resolved()
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        job = Job(name="done", kind=spec.kind, spec=spec.model_dump(mode="json"), total_steps=STEPS)
        session.add(job)
        session.commit()
        job_id = job.id
    run_dir = settings.run_dir(job_id)
    run_dir.mkdir(parents=True)
    rundir.write_json(run_dir / rundir.SPEC_FILE, spec.model_dump(mode="json"))
    # The earlier attempt's trainer, run to its end (as its lost runner left it).
    trained = subprocess.run(
        [sys.executable, "-m", "vit.train", str(run_dir / rundir.SPEC_FILE), "--out", str(run_dir)],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert trained.returncode == 0, trained.stderr
    assert rundir.run_complete(run_dir, STEPS)
    sessions = session_factory(settings.resolved_database_url)
    enqueued: list[int] = []

    def run_next_claim() -> state_machine.Claim:
        with sessions() as session:
            claim = state_machine.claim(session=session, worker="w-test")
        assert claim is not None and claim.job_id == job_id
        run = Run(
            claim=claim,
            settings=settings,
            enqueue=lambda job_id, _pool: enqueued.append(job_id),
            database=Database(sessions, job_id),
        )
        run.execute()
        return claim

    # That trainer still holds the directory (exiting, or frozen before it pruned): wait for it for half the
    # lease, then hand the job back at no cost, having written nothing.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
            str(run_dir / rundir.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        first = run_next_claim()
    finally:
        holder.kill()
        holder.wait()
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.attempt, job.worker) == (JobStatus.queued, first.attempt - 1, None)
        assert session.scalars(select(MetricPoint.id).where(MetricPoint.job_id == job_id)).first() is None
    assert enqueued == [job_id]

    # It is gone: the next claim stores the history and the checkpoints and succeeds, no trainer started (a
    # trainer run for an attempt records attempt-N.json once it holds the lock; the supervisor writes
    # lease-N.json before launching one).
    second = run_next_claim()
    assert second.attempt == first.attempt
    assert not rundir.attempt_path(run_dir, second.attempt).exists()
    assert not rundir.lease_path(run_dir, second.attempt).exists()
    written = [p for p in rundir.MetricsReader(run_dir).read_new() if p.name == "loss"]
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.attempt, job.step, job.resumed_from_step) == (
            JobStatus.succeeded,
            second.attempt,
            STEPS,
            STEPS,
        )
        stored = session.scalars(
            select(MetricPoint.step).where(MetricPoint.job_id == job_id, MetricPoint.name == "loss")
        ).all()
        listed = session.scalars(select(Checkpoint.name).where(Checkpoint.job_id == job_id)).all()
    assert sorted(stored) == [p.step for p in written] == list(range(5, STEPS + 1, 5))
    assert sorted(listed) == [c.name for c in rundir.scan_checkpoints(run_dir)]
    assert "already complete at step 20: recorded as succeeded" in (run_dir / rundir.LOG_FILE).read_text()
    engine.dispose()
