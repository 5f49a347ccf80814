"""Queue order is kept and told truthfully: claims take the first runnable job in queue order, a job that
becomes runnable takes its place by its original order, and the place the API shows is the place it runs in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from api.core import reads, workers
from api.core import state_machine as sm
from api.core.models import Job, JobStatus, Worker
from tests.api.core.test_state_machine import add_job, claim

LEASE = 60.0


def shown(engine: Engine, running_limit: int | None = None) -> dict[int, tuple[int | None, str | None]]:
    """Each queued job's place and reason, as GET /jobs shows them."""
    with Session(engine) as session:
        jobs = session.scalars(select(Job).where(Job.status == JobStatus.queued)).all()
        outs = reads.jobs_out(session=session, jobs=jobs, lease_seconds=LEASE, running_limit=running_limit)
        return {o.id: (o.queue_position, o.wait_reason) for o in outs}


def shown_alone(
    engine: Engine, job_id: int, running_limit: int | None = None
) -> tuple[int | None, str | None]:
    """One job's place and reason, as GET /jobs/{id} shows them (counted apart from the list's way)."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        (out,) = reads.jobs_out(session=session, jobs=[job], lease_seconds=LEASE, running_limit=running_limit)
        return out.queue_position, out.wait_reason


def run_order(engine: Engine, running_limit: int | None = None) -> list[int]:
    """The ids claims take, one after another, until nothing is left to claim."""
    taken = []
    with Session(engine) as session:
        while (won := sm.claim(session=session, worker="w", running_limit=running_limit)) is not None:
            taken.append(won.job_id)
    return taken


def places_in_order(places: dict[int, tuple[int | None, str | None]]) -> list[int]:
    return [job_id for job_id, (place, _) in sorted(places.items(), key=lambda item: item[1][0] or 0)]


def test_a_released_child_runs_in_its_original_place_before_later_jobs(engine: Engine) -> None:
    with Session(engine) as session:
        workers.announce(session=session, name="w", host="h", pid=1)
    parent = add_job(engine)
    with Session(engine) as session:
        running = claim(session, "w")
    child = add_job(engine, parent_job_id=parent, wait_reason=sm.waiting_reason(parent))
    later = [add_job(engine) for _ in range(3)]
    assert shown(engine)[child] == (None, f"waiting for job {parent} to succeed")
    assert [shown(engine)[j][0] for j in later] == [1, 2, 3]
    with Session(engine) as session:
        assert sm.finish(session=session, claim=running, status=JobStatus.succeeded)
        assert sm.release_waiting_children(session=session, parent_id=parent) == [child]
    places = shown(engine)
    assert places[child] == (1, "waiting for a free worker (0 jobs ahead)")
    assert {job_id: shown_alone(engine, job_id) for job_id in places} == places
    assert places_in_order(places) == [child, *later] == run_order(engine)


def test_an_owner_below_the_running_limit_again_takes_its_original_place(engine: Engine) -> None:
    with Session(engine) as session:
        workers.announce(session=session, name="w", host="h", pid=1)
    alice_running = add_job(engine, owner="alice")
    with Session(engine) as session:
        first = claim(session, "w")
    assert first.job_id == alice_running
    alice_next, bob_1, bob_2 = (
        add_job(engine, owner="alice"),
        add_job(engine, owner="bob"),
        add_job(engine, owner="bob"),
    )
    places = shown(engine, running_limit=1)
    assert places[alice_next] == (None, "waiting: its owner has 1 jobs running (max_running_jobs)")
    assert (places[bob_1][0], places[bob_2][0]) == (1, 2)
    with Session(engine) as session:
        won = sm.claim(session=session, worker="w", running_limit=1)
        assert won is not None and won.job_id == bob_1  # alice is at her limit
        assert sm.finish(session=session, claim=first, status=JobStatus.succeeded)
    # Alice dropped below her limit: her job is ahead of bob's later one again (bob_1 runs, bob at his limit
    # of 1 too, so only alice's job is claimable now; with a limit of 2, alice's comes before bob_2).
    places = shown(engine, running_limit=2)
    assert {job_id: shown_alone(engine, job_id, running_limit=2) for job_id in places} == places
    assert places_in_order(places) == [alice_next, bob_2] == run_order(engine, running_limit=2)


def test_priority_first_then_first_come_and_places_beyond_the_counted_head(engine: Engine) -> None:
    with Session(engine) as session:
        workers.announce(session=session, name="w", host="h", pid=1)
    low = add_job(engine)
    high = add_job(engine, priority=5)
    places = shown(engine)
    assert (places[high][0], places[low][0]) == (1, 2)
    assert (shown_alone(engine, high)[0], shown_alone(engine, low)[0]) == (1, 2)
    with Session(engine) as session:
        view = reads.QueueView(places={}, workers_alive={"default": 1})
        job = session.get(Job, low)
        assert job is not None
        assert (
            view.reason(job) == f"waiting for a free worker (more than {reads.PLACES_COUNTED:,} jobs ahead)"
        )
    assert run_order(engine) == [high, low]


def test_no_live_worker_is_the_reason_a_queued_job_waits(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        workers.announce(session=session, name="gone", host="h", pid=1)
        session.execute(update(Worker).values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=2 * LEASE)))
        session.commit()
    assert shown(engine)[job_id] == (
        1,
        "no worker is running: start one (vitq worker) and it will pick this job up",
    )
