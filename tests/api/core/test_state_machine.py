"""The job state machine and the fenced writes of a running attempt, against real databases (PostgreSQL and
SQLite, a fresh database per test: a claim takes the first runnable job, so no other test's jobs may be there)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.core import state_machine as sm
from api.core.errors import JobNotFoundError, JobStateError
from api.core.models import Checkpoint, Job, JobStatus, MetricPoint
from vit.config import JobSpec
from vit.rundir import CheckpointInfo
from vit.rundir import MetricPoint as Point
from worker import fenced_writes

SPEC = JobSpec.model_validate({"kind": "pretrain", "train": {"steps": 30}}).resolved()


def add_job(engine: Engine, **values: object) -> int:
    with Session(engine) as session:
        job = Job(name="t", kind=SPEC.kind, spec=SPEC.model_dump(mode="json"), total_steps=30, **values)
        session.add(job)
        session.commit()
        return job.id


def get_job(engine: Engine, job_id: int) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def expire_lease(session: Session, job_id: int) -> None:
    """Age a running job's heartbeat past a 10 s lease, as if its worker had died 30 s ago."""
    old = datetime.now(UTC) - timedelta(seconds=30)
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
    session.commit()


def claim(session: Session, worker: str, prefer: int | None = None) -> sm.Claim:
    won = sm.claim(session=session, worker=worker)
    assert won is not None
    return won


def test_claims_take_jobs_in_queue_order(engine: Engine) -> None:
    first, second, third = add_job(engine), add_job(engine), add_job(engine)
    with Session(engine) as session:
        assert claim(session, "w2").job_id == first
        taken = claim(session, "w3")
        assert claim(session, "w1").job_id == third
        assert sm.claim(session=session, worker="w4") is None  # nothing left
    assert (taken.job_id, taken.attempt, taken.spec) == (second, 1, SPEC)
    job = get_job(engine, first)
    assert (job.status, job.worker, job.attempt) == (JobStatus.running, "w2", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_racing_claims_never_both_win(engine: Engine) -> None:
    add_job(engine)
    won: list[sm.Claim | None] = []

    def race(name: str) -> None:
        with Session(engine) as session:
            won.append(sm.claim(session=session, worker=name))

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for c in won if c is not None) == 1


def test_a_claim_skips_cancelled_waiting_and_cancel_requested_jobs(engine: Engine) -> None:
    add_job(engine, status=JobStatus.cancelled)
    add_job(engine, wait_reason="waiting for job 1 to succeed")
    add_job(engine, cancel_requested=True)
    with Session(engine) as session:
        assert sm.claim(session=session, worker="w1") is None


def test_writes_of_a_runner_that_lost_its_job_are_refused_by_the_database(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        stale = claim(session, "w1")
        assert sm.renew(session=session, claim=stale, step=7) == (True, False)
        expire_lease(session, job_id)
        assert sm.requeue_stale(session=session, lease_seconds=10) == [job_id]
        successor = claim(session, "w2")
        assert successor.attempt == 2
        point = [Point("loss", 9, 1.0, 1.0)]
        found = [CheckpointInfo("step-000009", 9, 1)]
        # The stale runner wakes up: every write it tries is refused, and says so.
        assert sm.renew(session=session, claim=stale, step=9) == (False, False)
        assert not fenced_writes.add_metric_points(session=session, claim=stale, points=point, step=9)
        assert not fenced_writes.sync_checkpoints(session=session, claim=stale, found=found)
        assert not fenced_writes.start_history(session=session, claim=stale, resumed_from_step=None)
        assert not sm.finish(session=session, claim=stale, status=JobStatus.succeeded)
        assert not sm.release(session=session, claim=stale)
        # The same attempt number from another worker is no holder either.
        impostor = sm.Claim(**{**successor.__dict__, "worker": "w1"})
        assert not fenced_writes.add_metric_points(session=session, claim=impostor, points=point, step=9)
        assert fenced_writes.add_metric_points(session=session, claim=successor, points=point, step=9)
        assert session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).all() == [9]
        assert session.scalars(select(Checkpoint.name)).all() == []
    job = get_job(engine, job_id)
    assert (job.status, job.worker, job.attempt, job.step) == (JobStatus.running, "w2", 2, 9)


def test_a_fenced_write_holds_the_job_until_it_commits(engine: Engine) -> None:
    # Between the fence check and the commit, the job cannot be taken away: the requeue waits for the lock.
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes every write transaction anyway")
    job_id = add_job(engine)
    with Session(engine) as holder, Session(engine) as reaper:
        runner = claim(holder, "w1")
        expire_lease(reaper, job_id)
        assert sm.hold(session=holder, claim=runner)
        requeued: list[list[int]] = []
        thread = threading.Thread(
            target=lambda: requeued.append(sm.requeue_stale(session=reaper, lease_seconds=10))
        )
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # blocked on the row lock
        holder.commit()
        thread.join(10)
    assert requeued == [[job_id]]


def test_renew_reports_a_cancel_request(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        runner = claim(session, "w1")
        sm.request_cancel(session=session, job_id=job_id)
        assert sm.renew(session=session, claim=runner, step=3) == (True, True)


def test_requeue_stale_fails_a_job_out_of_attempts_and_its_waiting_fine_tunes(engine: Engine) -> None:
    job_id = add_job(engine, max_attempts=1)
    child = add_job(engine, parent_job_id=job_id, wait_reason=sm.waiting_reason(job_id))
    with Session(engine) as session:
        claim(session, "dead")
        expire_lease(session, job_id)
        assert sm.requeue_stale(session=session, lease_seconds=10) == []
    job = get_job(engine, job_id)
    assert job.status == JobStatus.failed and "attempt 1 of 1" in (job.error or "")
    assert get_job(engine, child).status == JobStatus.failed


def test_requeue_stale_gives_the_attempt_back_when_the_run_is_complete_on_disk(engine: Engine) -> None:
    """Issue 23, item 18: a lost runner whose trainer had finished every step used no attempt: its job is queued
    again with the attempt given back, even on its last one, while a job lost mid-run fails as before."""
    done, unfinished = add_job(engine, max_attempts=1), add_job(engine, max_attempts=1)
    asked: list[tuple[int, int]] = []

    def complete_on_disk(job_id: int, total_steps: int) -> bool:
        asked.append((job_id, total_steps))
        return job_id == done

    with Session(engine) as session:
        lost = claim(session, "dead")
        claim(session, "dead")
        assert lost.job_id == done
        expire_lease(session, done)
        expire_lease(session, unfinished)
        assert sm.requeue_stale(session=session, lease_seconds=10, complete_on_disk=complete_on_disk) == [
            done
        ]
        assert sorted(asked) == [(done, 30), (unfinished, 30)]
        job = get_job(engine, done)
        assert (job.status, job.attempt, job.worker) == (JobStatus.queued, 0, None)
        assert "finished every step" in (job.error or "")
        assert get_job(engine, unfinished).status == JobStatus.failed
        # The stale runner's writes are refused; the next claim is attempt 1 of 1 again.
        assert not sm.finish(session=session, claim=lost, status=JobStatus.succeeded)
        again = claim(session, "w2")
        assert (again.job_id, again.attempt) == (done, 1)
        assert sm.finish(session=session, claim=again, status=JobStatus.succeeded)
    job = get_job(engine, done)
    assert (job.status, job.attempt, job.error) == (JobStatus.succeeded, 1, None)


def test_metrics_checkpoints_and_finish(engine: Engine) -> None:
    job_id = add_job(engine)
    points = [Point("loss", step, 1.0 / step, 1000.0 + step) for step in range(1, 501)]
    points.append(Point("odd\tname\\", 3, -5.0, 1.0))  # COPY's text format must escape these
    found = [CheckpointInfo("step-000010", 10, 123), CheckpointInfo("step-000020", 20, 456)]
    with Session(engine) as session:
        runner = claim(session, "w1")
        assert fenced_writes.start_history(session=session, claim=runner, resumed_from_step=None)
        assert fenced_writes.add_metric_points(session=session, claim=runner, points=points, step=500)
        assert get_job(engine, job_id).step == 500  # progress moves with the metrics, not a heartbeat later
        assert fenced_writes.sync_checkpoints(session=session, claim=runner, found=found)
        assert fenced_writes.sync_checkpoints(session=session, claim=runner, found=found[1:])
        assert fenced_writes.parent_checkpoint(session=session, job_id=job_id, name=None) == "step-000020"
        assert fenced_writes.parent_checkpoint(session=session, job_id=job_id, name="step-000010") is None
        assert sm.finish(session=session, claim=runner, status=JobStatus.succeeded, step=30)
        steps = session.execute(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).scalars()
        names = session.execute(select(Checkpoint.name).where(Checkpoint.job_id == job_id)).scalars()
        assert sorted(steps) == sorted([*range(1, 501), 3])
        odd = session.execute(select(MetricPoint.name).where(MetricPoint.value == -5.0)).scalar_one()
        assert odd == "odd\tname\\"
        assert list(names) == ["step-000020"]
    job = get_job(engine, job_id)
    assert (job.status, job.step) == (JobStatus.succeeded, 30) and job.finished_at is not None


def test_a_resumed_attempt_starts_its_history_at_the_checkpoint(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        first = claim(session, "w1")
        fenced_writes.add_metric_points(
            session=session, claim=first, points=[Point("loss", s, 1.0, 1.0) for s in (10, 20, 30)], step=30
        )
        assert sm.release(session=session, claim=first, error="attempt 1 failed")
        second = claim(session, "w2")
        assert fenced_writes.start_history(session=session, claim=second, resumed_from_step=20)
        assert session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).all() == []
    job = get_job(engine, job_id)
    assert (job.resumed_from_step, job.step, job.attempt) == (20, 20, 2)


def test_fine_tune_waits_for_parent_then_is_released(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.running)
    child_id = add_job(engine, parent_job_id=parent_id)
    with Session(engine) as session:
        assert sm.claim(session=session, worker="w1") is None
        assert "waiting for job" in (get_job(engine, child_id).wait_reason or "")
        assert sm.release_waiting_children(session=session) == []
        session.execute(update(Job).where(Job.id == parent_id).values(status=JobStatus.succeeded))
        session.commit()
        assert sm.release_waiting_children(session=session) == [child_id]
        won = claim(session, "w1")
    assert won.parent_job_id == parent_id


def test_fine_tune_of_a_failed_parent_fails_and_so_do_its_own_children(engine: Engine) -> None:
    parent_id = add_job(engine)
    child_id = add_job(engine, parent_job_id=parent_id, wait_reason="waiting")
    grandchild_id = add_job(engine, parent_job_id=child_id, wait_reason="waiting")
    with Session(engine) as session:
        session.execute(
            update(Job).where(Job.id == parent_id).values(status=JobStatus.failed, error="out of memory")
        )
        session.commit()
        assert sm.release_waiting_children(session=session) == []
    assert get_job(engine, child_id).error == f"parent job {parent_id} failed: out of memory"
    grandchild = get_job(engine, grandchild_id)
    assert grandchild.status == JobStatus.failed and f"parent job {child_id}" in (grandchild.error or "")


def test_a_failed_job_fails_its_waiting_fine_tunes_at_once(engine: Engine) -> None:
    parent_id = add_job(engine)
    child_id = add_job(engine, parent_job_id=parent_id, wait_reason="waiting")
    with Session(engine) as session:
        runner = claim(session, "w1")
        assert sm.finish(session=session, claim=runner, status=JobStatus.failed, error="diverged")
    child = get_job(engine, child_id)
    assert child.status == JobStatus.failed and "diverged" in (child.error or "")


def test_a_cancel_requested_job_is_never_requeued(engine: Engine) -> None:
    # A cancel arriving while a job runs must end it cancelled even when it leaves its runner by a retry, a
    # worker shutdown or a dead worker: a queued job with a cancel request is never claimed again.
    released_id, stale_id = add_job(engine), add_job(engine)
    with Session(engine) as session:
        released = claim(session, "w1")
        claim(session, "dead")
        expire_lease(session, stale_id)
        session.execute(update(Job).values(cancel_requested=True).where(Job.id.in_([released_id, stale_id])))
        session.commit()
        assert not sm.release(session=session, claim=released, error="attempt 1 failed")
        assert sm.requeue_stale(session=session, lease_seconds=10) == []
    for job_id in (released_id, stale_id):
        job = get_job(engine, job_id)
        assert (job.status, job.worker, job.finished_at is not None) == (JobStatus.cancelled, None, True)


def test_cancel_of_a_queued_job_and_of_a_finished_one(engine: Engine) -> None:
    queued, done = add_job(engine), add_job(engine, status=JobStatus.succeeded)
    with Session(engine) as session:
        assert sm.request_cancel(session=session, job_id=queued).status == JobStatus.cancelled
        with pytest.raises(JobStateError, match="succeeded"):
            sm.request_cancel(session=session, job_id=done)
        with pytest.raises(JobNotFoundError):
            sm.request_cancel(session=session, job_id=done + 1000)


def test_a_failed_metric_copy_raises_a_sqlalchemy_error(engine: Engine) -> None:
    # The COPY goes through the raw driver; the supervisor's outage handling catches SQLAlchemy's errors only.
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's path")
    job_id = add_job(engine)
    with Session(engine) as session:
        runner = claim(session, "w1")
        with pytest.raises(DBAPIError, match="COPY metric_points"):  # PostgreSQL text never holds NUL
            fenced_writes.add_metric_points(
                session=session, claim=runner, points=[Point("a\0", 1, 1, 1)], step=1
            )
        session.rollback()
        assert fenced_writes.add_metric_points(
            session=session, claim=runner, points=[Point("a", 1, 1, 1)], step=1
        )
        assert (
            session.execute(select(MetricPoint.name).where(MetricPoint.job_id == job_id)).scalar_one() == "a"
        )


def test_a_shutdown_release_gives_the_attempt_back_and_a_retry_keeps_it(engine: Engine) -> None:
    add_job(engine, max_attempts=2)
    with Session(engine) as session:
        first = claim(session, "w1")
        assert first.attempt == 1
        assert sm.release(session=session, claim=first, count_attempt=False)  # worker shut down
        again = claim(session, "w2")
        assert again.attempt == 1
        assert sm.release(session=session, claim=again, error="trainer exited with code 1")
        last = claim(session, "w3")
    assert last.attempt == 2


def add_spec_job(engine: Engine, **resources: object) -> int:
    spec = JobSpec.model_validate({"kind": "pretrain", "resources": resources})
    with Session(engine) as session:
        job = sm.submit(session=session, spec=spec, max_attempts=3, parent=None)
        session.commit()
        return job.id


def test_higher_priority_runs_first_then_first_come_first_served(engine: Engine) -> None:
    low, high, normal, high_later = (add_spec_job(engine, priority=p) for p in (-5, 10, 0, 10))
    with Session(engine) as session:
        order = [claim(session, f"w{i}").job_id for i in range(4)]
    assert order == [high, high_later, normal, low]


def test_a_worker_claims_only_its_pool_and_what_fits_its_free_devices(engine: Engine) -> None:
    h100 = add_spec_job(engine, pool="h100", procs_per_node=1)
    four = add_spec_job(engine, procs_per_node=4)
    two = add_spec_job(engine, procs_per_node=2)
    cpu_job = add_spec_job(engine, device="cpu", procs_per_node=2)
    with Session(engine) as session:
        # Three free devices: the 4-GPU job does not fit and waits; the 2-GPU one takes the lowest two.
        first = sm.claim(session=session, worker="w", free_devices=[0, 1, 2])
        assert first is not None and (first.job_id, first.devices) == (two, (0, 1))
        second = sm.claim(session=session, worker="w", free_devices=[2])
        assert second is not None and (second.job_id, second.devices) == (cpu_job, ())  # a CPU job needs none
        assert sm.claim(session=session, worker="w", free_devices=[2]) is None
        assert (
            sm.claim(session=session, worker="cpu-worker", pool="h100") is not None
        )  # a CPU worker: any fit
        assert sm.release(session=session, claim=first)
    assert get_job(engine, two).devices is None  # handed back with the job
    assert (
        get_job(engine, four).status == JobStatus.queued and get_job(engine, h100).status == JobStatus.running
    )
