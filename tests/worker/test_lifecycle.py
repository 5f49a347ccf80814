"""The worker side's transitions against real databases (PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api import lifecycle
from api.db import make_engine
from api.migrate import upgrade
from api.models import Checkpoint, Job, JobStatus, MetricPoint
from vit.config import JobSpec

JOB_NAME = "lifecycle-test"
SPEC = JobSpec.model_validate({"kind": "pretrain", "train": {"steps": 30}}).resolved()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        engine = create_engine(request.getfixturevalue("pg_url"))
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'vitq.db'}")
    upgrade(str(engine.url.render_as_string(hide_password=False)))
    yield engine
    with Session(engine) as session:  # the PostgreSQL database is shared by the whole test run
        session.execute(delete(Job).where(Job.name == JOB_NAME))
        session.commit()
    engine.dispose()


def add_job(engine: Engine, **values: object) -> int:
    with Session(engine) as session:
        job = Job(name=JOB_NAME, kind=SPEC.kind, spec=SPEC.model_dump(mode="json"), total_steps=30, **values)
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


def test_second_claim_claims_nothing(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        first = lifecycle.claim_job(session=session, job_id=job_id, worker="w1")
        second = lifecycle.claim_job(session=session, job_id=job_id, worker="w2")
    assert first is not None and first.attempt == 1
    assert second is None
    job = get_job(engine, job_id)
    assert (job.status, job.worker, job.attempt) == (JobStatus.running, "w1", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_claim_skips_cancelled_and_unknown_jobs(engine: Engine) -> None:
    cancelled = add_job(engine, status=JobStatus.cancelled)
    with Session(engine) as session:
        assert lifecycle.claim_job(session=session, job_id=cancelled, worker="w1") is None
        assert lifecycle.claim_job(session=session, job_id=cancelled + 1000, worker="w1") is None
    assert get_job(engine, cancelled).status == JobStatus.cancelled


def test_heartbeat_by_non_holder_fails(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        claim = lifecycle.claim_job(session=session, job_id=job_id, worker="w1")
        assert claim is not None
        assert lifecycle.heartbeat(session=session, claim=claim, step=7)
        impostor = lifecycle.Claim(**{**claim.__dict__, "worker": "w2"})
        assert not lifecycle.heartbeat(session=session, claim=impostor, step=9)
        assert not lifecycle.finish_job(session=session, claim=impostor, status=JobStatus.succeeded)
    job = get_job(engine, job_id)
    assert (job.step, job.status) == (7, JobStatus.running)


def test_requeue_stale_requeues_then_next_claim_is_attempt_two(engine: Engine) -> None:
    job_id = add_job(engine)
    fresh_id = add_job(engine)
    with Session(engine) as session:
        dead = lifecycle.claim_job(session=session, job_id=job_id, worker="dead")
        alive = lifecycle.claim_job(session=session, job_id=fresh_id, worker="alive")
        assert dead is not None and alive is not None
        expire_lease(session, job_id)
        assert lifecycle.requeue_stale(session=session, lease_seconds=10) == [job_id]
        # The dead worker, should it come back, no longer holds the job.
        assert not lifecycle.heartbeat(session=session, claim=dead, step=1)
        again = lifecycle.claim_job(session=session, job_id=job_id, worker="w2")
    assert again is not None and again.attempt == 2
    assert get_job(engine, fresh_id).status == JobStatus.running
    assert "dead" in (get_job(engine, job_id).error or "")


def test_requeue_stale_fails_a_job_out_of_attempts(engine: Engine) -> None:
    job_id = add_job(engine, max_attempts=1)
    with Session(engine) as session:
        assert lifecycle.claim_job(session=session, job_id=job_id, worker="dead") is not None
        expire_lease(session, job_id)
        assert lifecycle.requeue_stale(session=session, lease_seconds=10) == []
    job = get_job(engine, job_id)
    assert job.status == JobStatus.failed and "attempt 1 of 1" in (job.error or "")


def test_metrics_checkpoints_and_finish(engine: Engine) -> None:
    job_id = add_job(engine)
    points = [lifecycle.MetricRow("loss", step, 1.0 / step, 1000.0 + step) for step in range(1, 501)]
    points.append(lifecycle.MetricRow("odd\tname\\", 3, -5.0, 1.0))  # COPY's text format must escape these
    found = [
        lifecycle.CheckpointFile("step-000010", 10, 123),
        lifecycle.CheckpointFile("step-000020", 20, 456),
    ]
    with Session(engine) as session:
        claim = lifecycle.claim_job(session=session, job_id=job_id, worker="w1")
        assert claim is not None
        lifecycle.add_metric_points(session=session, job_id=job_id, points=points)
        lifecycle.sync_checkpoints(session=session, job_id=job_id, found=found)
        lifecycle.sync_checkpoints(session=session, job_id=job_id, found=found[1:])
        assert lifecycle.checkpoint_name(session=session, job_id=job_id, name=None) == "step-000020"
        assert lifecycle.checkpoint_name(session=session, job_id=job_id, name="step-000010") is None
        assert lifecycle.finish_job(session=session, claim=claim, status=JobStatus.succeeded, step=30)
        steps = session.execute(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).scalars()
        names = session.execute(select(Checkpoint.name).where(Checkpoint.job_id == job_id)).scalars()
        assert sorted(steps) == sorted([*range(1, 501), 3])
        odd = session.execute(select(MetricPoint.name).where(MetricPoint.value == -5.0)).scalar_one()
        assert odd == "odd\tname\\"
        assert list(names) == ["step-000020"]
    job = get_job(engine, job_id)
    assert (job.status, job.step) == (JobStatus.succeeded, 30) and job.finished_at is not None


def test_fine_tune_waits_for_parent_then_is_released(engine: Engine) -> None:
    parent_id = add_job(engine)
    child_id = add_job(engine, parent_job_id=parent_id)
    with Session(engine) as session:
        assert lifecycle.claim_job(session=session, job_id=child_id, worker="w1") is None
        assert "waiting for job" in (get_job(engine, child_id).wait_reason or "")
        assert lifecycle.release_waiting_children(session=session) == []
        session.execute(update(Job).where(Job.id == parent_id).values(status=JobStatus.succeeded))
        session.commit()
        assert lifecycle.release_waiting_children(session=session) == [child_id]
        claim = lifecycle.claim_job(session=session, job_id=child_id, worker="w1")
    assert claim is not None and claim.parent_job_id == parent_id


def test_fine_tune_of_a_failed_parent_fails(engine: Engine) -> None:
    parent_id = add_job(engine)
    child_id = add_job(engine, parent_job_id=parent_id, wait_reason="waiting for job")
    with Session(engine) as session:
        session.execute(
            update(Job).where(Job.id == parent_id).values(status=JobStatus.failed, error="out of memory")
        )
        session.commit()
        assert lifecycle.release_waiting_children(session=session) == []
    child = get_job(engine, child_id)
    assert child.status == JobStatus.failed
    assert child.error == f"parent job {parent_id} failed: out of memory"


def test_a_cancel_requested_job_is_never_requeued(engine: Engine) -> None:
    # A cancel arriving while a job runs must end it cancelled even when it leaves its runner by a retry, a
    # worker shutdown or a dead worker: a queued job with a cancel request is never claimed again.
    released_id, stale_id = add_job(engine), add_job(engine)
    with Session(engine) as session:
        released = lifecycle.claim_job(session=session, job_id=released_id, worker="w1")
        stale = lifecycle.claim_job(session=session, job_id=stale_id, worker="dead")
        assert released is not None and stale is not None
        expire_lease(session, stale_id)
        session.execute(update(Job).values(cancel_requested=True).where(Job.id.in_([released_id, stale_id])))
        session.commit()
        assert not lifecycle.release_job(session=session, claim=released, error="attempt 1 failed")
        assert lifecycle.requeue_stale(session=session, lease_seconds=10) == []
    for job_id in (released_id, stale_id):
        job = get_job(engine, job_id)
        assert (job.status, job.worker, job.finished_at is not None) == (JobStatus.cancelled, None, True)


def test_a_failed_metric_copy_raises_a_sqlalchemy_error(engine: Engine) -> None:
    # The COPY goes through the raw driver; the supervisor's outage handling catches SQLAlchemy's errors only,
    # and an escaped psycopg error used to end supervision with the trainer still running.
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's path")
    job_id = add_job(engine)
    with Session(engine) as session:
        with pytest.raises(DBAPIError, match="COPY metric_points"):  # PostgreSQL text never holds NUL
            lifecycle.add_metric_points(
                session=session, job_id=job_id, points=[lifecycle.MetricRow("a\0", 1, 1, 1)]
            )
        session.rollback()
        lifecycle.add_metric_points(
            session=session, job_id=job_id, points=[lifecycle.MetricRow("a", 1, 1, 1)]
        )
        assert (
            session.execute(select(MetricPoint.name).where(MetricPoint.job_id == job_id)).scalar_one() == "a"
        )


def test_a_shutdown_release_gives_the_attempt_back_and_a_retry_keeps_it(engine: Engine) -> None:
    job_id = add_job(engine, max_attempts=2)
    with Session(engine) as session:
        first = lifecycle.claim_job(session=session, job_id=job_id, worker="w1")
        assert first is not None and first.attempt == 1
        assert lifecycle.release_job(session=session, claim=first, count_attempt=False)  # worker shut down
        again = lifecycle.claim_job(session=session, job_id=job_id, worker="w2")
        assert again is not None and again.attempt == 1
        assert lifecycle.release_job(session=session, claim=again, error="trainer exited with code 1")
        last = lifecycle.claim_job(session=session, job_id=job_id, worker="w3")
    assert last is not None and last.attempt == 2
