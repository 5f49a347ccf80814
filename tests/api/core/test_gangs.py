"""Gang start of multi-node jobs (api/core/gangs.py) against real PostgreSQL and SQLite, a fresh database per test."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from api.core import gangs, reads
from api.core import state_machine as sm
from api.core.models import Job, JobNode, JobStatus
from vit.config import JobSpec

TWO_NODES = JobSpec.model_validate(
    {"kind": "pretrain", "train": {"steps": 30}, "resources": {"nodes": 2}}
).resolved()
STALE_S = 30.0


def submit(engine: Engine, spec: JobSpec = TWO_NODES) -> int:
    with Session(engine) as session:
        job = sm.submit(session=session, spec=spec, max_attempts=3, parent=None)
        session.commit()
        return job.id


def join(engine: Engine, job_id: int, worker: str, port: int = 29500) -> gangs.Membership | None:
    with Session(engine) as session:
        return gangs.join(
            session=session,
            job_id=job_id,
            worker=worker,
            address=f"10.0.0.{worker[-1]}",
            choose_port=lambda: port,
            stale_after_seconds=STALE_S,
        )


def job(engine: Engine, job_id: int) -> Job:
    with Session(engine) as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def test_the_member_completing_the_gang_starts_it_and_all_share_one_attempt(engine: Engine) -> None:
    job_id = submit(engine)
    with Session(engine) as session:
        assert sm.claim(session=session, worker="solo") is None  # never started by one worker
    first = join(engine, job_id, "w1", port=31234)
    assert first is not None and first.node_rank == 0 and first.attempt == 1
    assert job(engine, job_id).status == JobStatus.queued
    with Session(engine) as session:
        assert gangs.started(session=session, membership=first) is None
    second = join(engine, job_id, "w2")
    assert second is not None and second.node_rank == 1
    stored = job(engine, job_id)
    assert (stored.status, stored.attempt, stored.worker) == (JobStatus.running, 1, "w1")
    assert reads.job_out(stored).nodes == ["w1", "w2"]  # every node of the job, in rank order
    with Session(engine) as session:
        gang_1 = gangs.started(session=session, membership=first)
        gang_2 = gangs.started(session=session, membership=second)
    assert gang_1 is not None and gang_2 is not None
    assert gang_1.rendezvous == gang_2.rendezvous == "10.0.0.1:31234"
    assert gang_1.claim.attempt == gang_2.claim.attempt == 1
    assert [m.worker for m in gang_2.members] == ["w1", "w2"]
    assert join(engine, job_id, "w3") is None  # a started gang takes no one else
    with Session(engine) as session:  # the shared fencing token: rank 0's claim holds the job
        assert sm.hold(session=session, claim=gang_2.claim)


def test_a_member_that_leaves_frees_its_rank_and_a_late_leave_after_the_start_must_run(
    engine: Engine,
) -> None:
    job_id = submit(engine)
    first = join(engine, job_id, "w1")
    assert first is not None
    with Session(engine) as session:
        assert gangs.leave(session=session, membership=first)
    again = join(engine, job_id, "w2")
    assert again is not None and again.node_rank == 0  # rank 0 is free again: nothing left behind
    assert job(engine, job_id).status == JobStatus.queued
    last = join(engine, job_id, "w3")
    assert last is not None and job(engine, job_id).status == JobStatus.running
    with Session(engine) as session:
        assert not gangs.leave(session=session, membership=again)  # too late: it started, run it


def test_a_member_that_died_while_waiting_loses_its_place(engine: Engine) -> None:
    job_id = submit(engine)
    dead = join(engine, job_id, "w1")
    assert dead is not None
    with Session(engine) as session:
        session.execute(update(JobNode).values(heartbeat_at=sm.now() - timedelta(seconds=STALE_S + 1)))
        session.commit()
    alive = join(engine, job_id, "w2")
    assert alive is not None and alive.node_rank == 0
    assert job(engine, job_id).status == JobStatus.queued  # the dead member did not count


def test_a_stale_member_requeues_the_running_gang_and_the_others_renewals_are_refused(engine: Engine) -> None:
    job_id = submit(engine)
    first, second = join(engine, job_id, "w1"), join(engine, job_id, "w2")
    assert first is not None and second is not None
    with Session(engine) as session:
        assert gangs.renew(session=session, membership=first)
        assert gangs.requeue_broken_gangs(session=session, lease_seconds=STALE_S) == []
        session.execute(
            update(JobNode)
            .where(JobNode.worker == "w2")
            .values(heartbeat_at=sm.now() - timedelta(seconds=STALE_S + 1))
        )
        session.commit()
        assert gangs.requeue_broken_gangs(session=session, lease_seconds=STALE_S) == [job_id]
        assert not gangs.renew(session=session, membership=first)
    stored = job(engine, job_id)
    assert (stored.status, stored.attempt) == (JobStatus.queued, 1)
    assert stored.error is not None and "gang" in stored.error
    fresh = join(engine, job_id, "w3")
    assert fresh is not None and fresh.attempt == 2  # the next gang runs under a new fencing token


def test_two_gang_jobs_and_three_workers_never_deadlock(engine: Engine) -> None:
    """Three workers loop: join the first gang job of the pool, wait up to a short timeout, leave. Both jobs
    must start (the first on two workers, the second once they are free), and no worker ever holds a place in
    two gangs."""
    jobs = [submit(engine), submit(engine)]
    finished: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + 60

    def worker(name: str) -> None:
        try:
            while time.monotonic() < deadline and len(finished) < 2:
                with Session(engine) as session:
                    first = gangs.first_gang_job(session=session, pool="default", free_devices=None)
                if first is None:
                    time.sleep(0.02)
                    continue
                job_id, _gpus = first
                member = join(engine, job_id, name)
                if member is None:
                    continue
                gang = None
                wait_until = time.monotonic() + 0.3
                while time.monotonic() < wait_until:
                    with Session(engine) as session:
                        gang = gangs.started(session=session, membership=member)
                    if gang is not None:
                        break
                    time.sleep(0.02)
                if gang is None:
                    with Session(engine) as session:
                        if gangs.leave(session=session, membership=member):
                            continue
                        gang = gangs.started(session=session, membership=member)
                    assert gang is not None
                if gang.members[0].worker == name:  # rank 0 "runs" it briefly, then finishes it
                    time.sleep(0.1)
                    with Session(engine) as session:
                        assert sm.finish(session=session, claim=gang.claim, status=JobStatus.succeeded)
                    finished.append(gang.claim.job_id)
                else:
                    while job(engine, gang.claim.job_id).status == JobStatus.running:
                        time.sleep(0.02)
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors
    assert sorted(finished) == jobs
    with Session(engine) as session:
        rows = session.execute(select(JobNode.job_id, JobNode.worker, JobNode.node_rank)).all()
    assert len(rows) == 4  # two members each, nothing left of the gangs that timed out
    assert {job_id for job_id, _, _ in rows} == set(jobs)
    assert all(job(engine, j).status == JobStatus.succeeded for j in jobs)
