"""The job state machine's smaller promises, each pinned by a test that fails when it breaks (mutation testing,
tests/MUTANTS.md): what each transition writes beyond the status, whose jobs it touches, the messages users
read, the owner quota and its lock, and the claim that lost a race. A fresh PostgreSQL or SQLite database per
test (the `engine` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session

from api.core import state_machine as sm
from api.core.errors import JobNotFoundError
from api.core.models import Checkpoint, Job, JobStatus
from vit.config import JobSpec

from .test_state_machine import add_job, add_spec_job, claim, expire_lease, get_job

ALICE, BOB = sm.Principal("alice"), sm.Principal("bob")


def set_status(engine: Engine, job_id: int, status: JobStatus, **values: Any) -> None:
    with Session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, **values))
        session.commit()


def add_checkpoint(engine: Engine, job_id: int) -> None:
    with Session(engine) as session:
        session.add(Checkpoint(job_id=job_id, name="step-000010", step=10, size_bytes=1))
        session.commit()


def _before_first_update(session: Session, action: Any) -> list[object]:
    """Run `action` (in another session) just before `session`'s first UPDATE: a race lost deterministically."""
    updates: list[object] = []

    @event.listens_for(session, "do_orm_execute")
    def _interfere(state: Any) -> None:
        if state.is_update and not updates:
            updates.append(state.statement)
            action()

    return updates


# ------------------------------------------------------------------------------------------------ submit
@pytest.mark.parametrize("how", ["submit", "store"])
def test_submit_and_store_keep_what_the_spec_and_the_caller_say(engine: Engine, how: str) -> None:
    """submit adds the ORM object (a sweep's children), store inserts at once (POST /jobs, with its key)."""
    spec = JobSpec.model_validate(
        {"kind": "finetune", "resources": {"nodes": 2, "pool": "h100", "priority": 3}, "train": {"steps": 7}}
    )
    parent_id = add_job(engine, status=JobStatus.running)
    keys = {"idempotency_key": "key-1", "request_hash": "hash-1"} if how == "store" else {}
    with Session(engine) as session:
        parent = session.get(Job, parent_id)
        made = sm.store if how == "store" else sm.submit
        stored = made(session=session, spec=spec, max_attempts=5, parent=parent, owner="alice", **keys)
        session.commit()
        job_id = stored.id
    job = get_job(engine, job_id)
    assert (job.status, job.parent_job_id, job.max_attempts, job.nodes, job.pool, job.priority) == (
        JobStatus.queued,
        parent_id,
        5,
        2,
        "h100",
        3,
    )
    assert (job.owner, job.idempotency_key, job.request_hash, job.total_steps) == (
        "alice",
        keys.get("idempotency_key"),
        keys.get("request_hash"),
        7,
    )
    assert job.wait_reason == f"waiting for job {parent_id} to succeed"
    assert job.spec == spec.resolved().model_dump(mode="json")


@pytest.mark.parametrize("parent_status", [None, JobStatus.succeeded, JobStatus.cancelled])
def test_submit_waits_only_for_an_unfinished_parent(engine: Engine, parent_status: JobStatus | None) -> None:
    parent_id = add_job(engine, status=parent_status) if parent_status else None
    with Session(engine) as session:
        parent = session.get(Job, parent_id) if parent_id else None
        job = sm.submit(session=session, spec=JobSpec(kind="pretrain"), max_attempts=3, parent=parent)
        session.commit()
        assert (job.parent_job_id, job.wait_reason, job.owner) == (parent_id, None, "local")


def test_waiting_reasons_read_well() -> None:
    assert sm.waiting_reason(3) == "waiting for job 3 to succeed"
    assert sm.waiting_reason(3, "running") == "waiting for job 3 (running) to succeed"


def test_times_are_timezone_aware() -> None:
    assert sm.now().tzinfo is UTC


# ------------------------------------------------------------------------------------------------ settle
def test_settling_releases_a_job_whose_parent_finished_meanwhile_and_nothing_else(engine: Engine) -> None:
    parent_id, other_parent = add_job(engine), add_job(engine, status=JobStatus.succeeded)
    waiting = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    sibling = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    stranger = add_job(engine, parent_job_id=other_parent, wait_reason=sm.waiting_reason(other_parent))
    with Session(engine) as session:
        job = session.get(Job, waiting)
        assert job is not None
        assert not sm.settle_waiting_job(session=session, job=job)  # the parent has not finished
        assert job.wait_reason is not None
        set_status(engine, parent_id, JobStatus.succeeded)
        assert sm.settle_waiting_job(session=session, job=job)
        assert job.wait_reason is None  # refreshed
    assert get_job(engine, sibling).wait_reason is None  # the same parent's other children go too
    assert get_job(engine, stranger).wait_reason is not None  # another parent's children wait for theirs


def test_settling_a_job_that_does_not_wait_does_nothing(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.succeeded)
    child = add_job(engine, parent_job_id=parent_id)  # stored after its parent finished: no wait
    sibling = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    plain = add_job(engine)
    with Session(engine) as session:
        for job_id in (child, plain):
            job = session.get(Job, job_id)
            assert job is not None and not sm.settle_waiting_job(session=session, job=job)
    assert get_job(engine, sibling).wait_reason is not None


# ------------------------------------------------------------------------------------------------ cancel
def test_a_cancelled_queued_job_records_when_and_by_whom_and_fails_its_waiting_tree(engine: Engine) -> None:
    parent_id = add_job(engine, owner="alice")
    children = [add_job(engine, parent_job_id=parent_id, wait_reason="w") for _ in range(2)]
    grandchildren = [add_job(engine, parent_job_id=child, wait_reason="w") for child in children]
    unrelated = add_job(engine, wait_reason="w")
    with Session(engine) as session:
        job = sm.request_cancel(session=session, job_id=parent_id, principal=ALICE)
    assert (job.status, job.cancelled_by, job.wait_reason) == (JobStatus.cancelled, "alice", None)
    assert job.finished_at is not None
    for child in children:
        failed = get_job(engine, child)
        assert (failed.status, failed.error) == (JobStatus.failed, f"parent job {parent_id} was cancelled")
        assert failed.wait_reason is None and failed.finished_at is not None
    for grandchild, child in zip(grandchildren, children, strict=True):
        failed = get_job(engine, grandchild)
        assert failed.status == JobStatus.failed
        assert failed.error == f"parent job {child} failed: parent job {parent_id} was cancelled"
    assert get_job(engine, unrelated).status == JobStatus.queued


def test_a_cancel_of_a_running_job_is_a_request_and_the_first_canceller_is_kept(engine: Engine) -> None:
    job_id = add_job(engine, owner="alice")
    with Session(engine, expire_on_commit=False) as session:  # as the API's sessions
        claim(session, "w1")
        loaded = session.get(Job, job_id)  # in the identity map: the answer must not be this stale copy
        assert loaded is not None and not loaded.cancel_requested
        job = sm.request_cancel(session=session, job_id=job_id, principal=ALICE)
        assert (job.status, job.cancel_requested, job.cancelled_by) == (JobStatus.running, True, "alice")
        again = sm.request_cancel(
            session=session, job_id=job_id, principal=sm.Principal("root", is_admin=True)
        )
        assert again.cancelled_by == "alice"


def test_another_owners_job_is_not_found_and_left_alone(engine: Engine) -> None:
    running, queued = add_job(engine, owner="alice"), add_job(engine, owner="alice")
    with Session(engine) as session:
        claim(session, "w1")
        for job_id in (queued, running):
            with pytest.raises(JobNotFoundError, match=rf"^job {job_id} not found$"):
                sm.request_cancel(session=session, job_id=job_id, principal=BOB)
    assert get_job(engine, queued).status == JobStatus.queued
    assert not get_job(engine, running).cancel_requested
    assert sm.visible_to(ALICE) and sm.visible_to(sm.Principal("root", is_admin=True)) == ()
    with Session(engine) as session:
        assert session.scalars(select(Job.id).where(*sm.visible_to(BOB))).all() == []
        assert len(session.scalars(select(Job.id).where(*sm.visible_to(ALICE))).all()) == 2


# ------------------------------------------------------------------------------------------------ claim
def test_a_claim_records_its_devices_and_the_attempts_allowed(engine: Engine) -> None:
    two = add_spec_job(engine, procs_per_node=2)
    cpu = add_spec_job(engine, device="cpu")
    with Session(engine) as session:
        first = sm.claim(session=session, worker="w", free_devices=[2, 3])  # exactly enough
        second = sm.claim(session=session, worker="w", free_devices=[])
    assert first is not None and (first.job_id, first.devices, first.max_attempts) == (two, (2, 3), 3)
    assert second is not None and second.job_id == cpu
    assert (get_job(engine, two).devices, get_job(engine, cpu).devices) == ("2,3", None)


def test_the_running_limit_delays_only_owners_at_it(engine: Engine) -> None:
    add_job(engine, owner="alice")
    with Session(engine) as session:
        claim(session, "w0")  # alice's first job runs
    alices, bobs = add_job(engine, owner="alice"), add_job(engine, owner="bob")
    with Session(engine) as session:
        first = sm.claim(session=session, worker="w1", running_limit=1)
        assert first is not None and first.job_id == bobs  # alice has her one running job
        assert sm.claim(session=session, worker="w2", running_limit=1) is None
        second = sm.claim(session=session, worker="w2", running_limit=2)
        assert second is not None and second.job_id == alices


def test_a_limited_claim_takes_the_owners_lock_and_an_unlimited_one_does_not(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: no owner lock")
    add_job(engine, owner="alice")
    with Session(engine) as holder:
        sm.lock_owner(session=holder, owner="bob")  # another owner's lock: no wait
        with Session(engine) as session:
            assert sm.claim(session=session, worker="w1", running_limit=5) is not None
        add_job(engine, owner="alice")
        sm.lock_owner(session=holder, owner="alice")
        with Session(engine) as session:
            assert sm.claim(session=session, worker="w2") is not None  # no limit: no lock
        add_job(engine, owner="alice")
        won: list[sm.Claim | None] = []

        def limited_claim() -> None:
            with Session(engine) as session:
                won.append(sm.claim(session=session, worker="w3", running_limit=5))

        thread = threading.Thread(target=limited_claim)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waiting for alice's lock
        holder.commit()
        thread.join(10)
    assert won and won[0] is not None


def test_sqlite_takes_no_owner_lock(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the PostgreSQL lock is the test above")
    with Session(engine) as session:
        sm.lock_owner(session=session, owner="alice")  # PostgreSQL's function would fail on SQLite
        session.commit()


def test_a_claim_looks_at_no_more_than_five_candidates(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.running)
    children = [add_job(engine, parent_job_id=parent_id) for _ in range(5)]  # each parks when looked at
    runnable = add_job(engine)
    with Session(engine) as session:
        assert sm.claim(session=session, worker="w1") is None
        assert all(get_job(engine, child).wait_reason for child in children)
        assert claim(session, "w1").job_id == runnable


@pytest.mark.parametrize("meanwhile", ["claim and release", "cancel"])
def test_a_claim_that_read_the_job_before_it_moved_loses(engine: Engine, meanwhile: str) -> None:
    """Between reading the job and its UPDATE, another claim takes the job and releases it (the attempt moves
    on), or a cancel ends it: the UPDATE must then change nothing."""
    job_id = add_job(engine)

    def interfere() -> None:
        with Session(engine) as other:
            if meanwhile == "cancel":
                sm.request_cancel(session=other, job_id=job_id)
            else:
                assert sm.release(session=other, claim=claim(other, "fast"))

    with Session(engine) as late:
        updates = _before_first_update(late, interfere)
        assert sm.claim(session=late, worker="slow") is None
    assert updates  # the interference did run between the read and the UPDATE
    job = get_job(engine, job_id)
    assert job.worker is None and job.status != JobStatus.running


@pytest.mark.parametrize("parent_status", [JobStatus.cancelled, JobStatus.failed])
def test_a_stopped_parent_that_kept_a_checkpoint_lets_its_child_start(
    engine: Engine, parent_status: JobStatus
) -> None:
    parent_id = add_job(engine, status=parent_status)
    add_checkpoint(engine, parent_id)
    child = add_job(engine, parent_job_id=parent_id)
    with Session(engine) as session:
        assert claim(session, "w1").job_id == child


def test_a_stopped_parent_without_a_checkpoint_fails_its_child_and_the_childs_children(
    engine: Engine,
) -> None:
    with_checkpoint = add_job(engine, status=JobStatus.succeeded)
    add_checkpoint(engine, with_checkpoint)  # another job's checkpoint does not count
    cancelled, failed = add_job(engine, status=JobStatus.cancelled), add_job(engine, status=JobStatus.failed)
    of_cancelled = add_job(engine, parent_job_id=cancelled)
    of_failed = add_job(engine, parent_job_id=failed)
    grandchild = add_job(engine, parent_job_id=of_failed, wait_reason="w")
    with Session(engine) as session:
        assert sm.claim(session=session, worker="w1") is None
    expected = {
        of_cancelled: f"parent job {cancelled} was cancelled",
        of_failed: f"parent job {failed} failed: no error recorded",
        grandchild: f"parent job {of_failed} failed: parent job {failed} failed: no error recorded",
    }
    for job_id, error in expected.items():
        job = get_job(engine, job_id)
        assert (job.status, job.error, job.wait_reason) == (JobStatus.failed, error, None)
        assert job.finished_at is not None


def test_a_running_parent_parks_only_the_child_looked_at(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.running)
    child = add_job(engine, parent_job_id=parent_id)
    with Session(engine) as session:
        other = add_job(engine)
        won = sm.claim(session=session, worker="w1")
    assert won is not None and won.job_id == other  # the next in line still starts
    assert get_job(engine, child).wait_reason == f"waiting for job {parent_id} (running) to succeed"


# ------------------------------------------------------------------------------------------------ holding
def test_renew_moves_the_heartbeat_and_the_step(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        runner = claim(session, "w1")
        expire_lease(session, job_id)
        assert sm.renew(session=session, claim=runner, step=12) == (True, False)
    job = get_job(engine, job_id)
    assert job.step == 12 and job.heartbeat_at is not None
    assert job.heartbeat_at.replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(seconds=10)


def test_a_fresh_start_resets_the_step(engine: Engine) -> None:
    job_id = add_job(engine, step=17)
    with Session(engine) as session:
        runner = claim(session, "w1")
        assert sm.record_progress_start(session=session, claim=runner, resumed_from_step=None)
    assert (get_job(engine, job_id).step, get_job(engine, job_id).resumed_from_step) == (0, None)


def test_finish_refuses_a_state_that_is_not_final(engine: Engine) -> None:
    add_job(engine)
    with Session(engine) as session:
        runner = claim(session, "w1")
        with pytest.raises(ValueError, match=r"^running is not a final state$"):
            sm.finish(session=session, claim=runner, status=JobStatus.running)


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (JobStatus.cancelled, None, "parent job {} was cancelled"),
        (JobStatus.failed, None, "parent job {} failed"),
        (JobStatus.failed, "diverged", "parent job {} failed: diverged"),
    ],
)
def test_finish_tells_waiting_children_why(
    engine: Engine, status: JobStatus, error: str | None, reason: str
) -> None:
    parent_id = add_job(engine)
    child = add_job(engine, parent_job_id=parent_id, wait_reason="w")
    with Session(engine) as session:
        runner = claim(session, "w1")
        assert sm.finish(session=session, claim=runner, status=status, error=error)
    assert get_job(engine, child).error == reason.format(parent_id)


def test_a_runner_that_lost_its_job_cannot_fail_the_jobs_children(engine: Engine) -> None:
    parent_id = add_job(engine)
    child = add_job(engine, parent_job_id=parent_id, wait_reason="w")
    with Session(engine) as session:
        stale = claim(session, "w1")
        assert sm.release(session=session, claim=stale)
        assert not sm.finish(session=session, claim=stale, status=JobStatus.failed, error="late")
    assert get_job(engine, child).status == JobStatus.queued


def test_a_release_clears_the_runner_and_keeps_the_reason(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        runner = claim(session, "w1")
        assert sm.release(session=session, claim=runner, error="trainer exited with code 1")
    job = get_job(engine, job_id)
    assert (job.status, job.worker, job.heartbeat_at, job.error) == (
        JobStatus.queued,
        None,
        None,
        "trainer exited with code 1",
    )


def test_a_cancel_instead_of_a_requeue_ends_only_that_job(engine: Engine) -> None:
    mine, other = add_spec_job(engine, procs_per_node=1), add_spec_job(engine, procs_per_node=1)
    with Session(engine) as session:
        runner = sm.claim(session=session, worker="w1", free_devices=[0])
        assert runner is not None
        claim(session, "w2")
        session.execute(update(Job).values(cancel_requested=True))
        session.commit()
        assert not sm.release(session=session, claim=runner)
    job = get_job(engine, mine)
    assert (job.status, job.worker, job.heartbeat_at, job.devices) == (JobStatus.cancelled, None, None, None)
    assert get_job(engine, other).status == JobStatus.running


# ------------------------------------------------------------------------------------------------ recovery
def test_requeue_stale_leaves_fresh_leases_alone_and_clears_stale_holders(engine: Engine) -> None:
    fresh, stale = add_spec_job(engine, procs_per_node=1), add_spec_job(engine, procs_per_node=1)
    with Session(engine) as session:
        assert sm.claim(session=session, worker="alive", free_devices=[0]) is not None
        assert sm.claim(session=session, worker="dead", free_devices=[1]) is not None
        expire_lease(session, stale)
        assert sm.requeue_stale(session=session, lease_seconds=10) == [stale]
    job = get_job(engine, stale)
    assert (job.status, job.worker, job.heartbeat_at, job.devices) == (JobStatus.queued, None, None, None)
    assert job.error == "worker dead stopped renewing its lease (attempt 1 of 3)"
    assert get_job(engine, fresh).status == JobStatus.running


def test_a_last_attempt_lost_fails_the_waiting_children_with_the_reason(engine: Engine) -> None:
    parent_id = add_job(engine, max_attempts=1)
    child = add_job(engine, parent_job_id=parent_id, wait_reason="w")
    with Session(engine) as session:
        claim(session, "dead")
        expire_lease(session, parent_id)
        sm.requeue_stale(session=session, lease_seconds=10)
    assert get_job(engine, child).error == (
        f"parent job {parent_id} failed: worker dead stopped renewing its lease (attempt 1 of 1)"
    )


def test_a_requeue_that_lost_the_race_fails_nothing(engine: Engine) -> None:
    parent_id = add_job(engine, max_attempts=1)
    child = add_job(engine, parent_job_id=parent_id, wait_reason="w")
    with Session(engine) as session:
        claim(session, "w1")
        nothing = (Job.id == parent_id, Job.worker == "someone else")
        assert not sm.requeue(
            session=session, job_id=parent_id, attempt=1, max_attempts=1, where=nothing, lost="gone"
        )
        session.commit()
    assert get_job(engine, parent_id).status == JobStatus.running
    assert get_job(engine, child).status == JobStatus.queued


def test_an_uncharged_requeue_gives_the_attempt_back_even_on_the_last_one(engine: Engine) -> None:
    # A preempted run (its cluster took it away): nothing failed, so even a last attempt is not used up.
    job_id = add_job(engine, max_attempts=1)
    with Session(engine) as session:
        claim(session, "w1")
        running = (Job.id == job_id, Job.status == JobStatus.running, Job.attempt == 1)
        assert sm.requeue(
            session=session, job_id=job_id, attempt=1, max_attempts=1, where=running, lost="preempted",
            charge=False,
        )  # fmt: skip
        session.commit()
    job = get_job(engine, job_id)
    assert (job.status, job.attempt, job.error, job.worker, job.finished_at) == (
        JobStatus.queued, 0, "preempted", None, None,
    )  # fmt: skip


def test_a_launch_claim_records_its_nodes_and_clears_the_launch_note(engine: Engine) -> None:
    job_id = add_job(engine)
    set_status(engine, job_id, JobStatus.queued, executor_ref="slurm:7", executor_note="Slurm job 7 pending")
    with Session(engine) as session:
        # Another launch's claim finds nothing: the job names launch 7.
        assert not sm.claim_job(
            session=session, job_id=job_id, worker="n1:slurm-8", executor_ref="slurm:8", nodes=()
        )
        won = sm.claim_job(
            session=session, job_id=job_id, worker="n1:slurm-7", executor_ref="slurm:7", nodes=("n2", "n1")
        )
    assert won is not None and won.attempt == 1
    job = get_job(engine, job_id)
    assert (job.status, job.placement, job.executor_note) == (JobStatus.running, "n2,n1", None)


def test_releasing_one_parents_children_leaves_the_others_waiting(engine: Engine) -> None:
    done, also_done = add_job(engine, status=JobStatus.succeeded), add_job(engine, status=JobStatus.succeeded)
    mine = add_job(engine, parent_job_id=done, wait_reason="w")
    theirs = add_job(engine, parent_job_id=also_done, wait_reason="w")
    with Session(engine) as session:
        assert sm.release_waiting_children(session=session, parent_id=done) == [mine]
    assert get_job(engine, theirs).wait_reason == "w"


def test_resolving_waiting_children_touches_only_waiting_ones(engine: Engine) -> None:
    stopped = add_job(engine, status=JobStatus.cancelled)
    add_checkpoint(engine, stopped)
    starts_from_its_checkpoint = add_job(engine, parent_job_id=stopped)  # stored after the stop: no wait
    waiting = add_job(engine, parent_job_id=stopped, wait_reason="w")  # stored while it ran
    with Session(engine) as session:
        assert sm.release_waiting_children(session=session) == []
    assert get_job(engine, starts_from_its_checkpoint).status == JobStatus.queued
    failed = get_job(engine, waiting)
    assert (failed.status, failed.wait_reason, failed.error) == (
        JobStatus.failed,
        None,
        f"parent job {stopped} was cancelled",
    )


def test_a_cancelled_waiting_job_no_longer_says_it_waits(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.running)
    child = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    with Session(engine) as session:
        job = sm.request_cancel(session=session, job_id=child)
    assert (job.status, job.wait_reason) == (JobStatus.cancelled, None)


def test_a_failing_parent_fails_only_its_own_queued_children(engine: Engine) -> None:
    parent_id, unrelated = add_job(engine), add_job(engine)
    with Session(engine) as session:
        sm.fail_waiting_children(session=session, parent_id=parent_id, error="x")
        session.commit()
    assert get_job(engine, unrelated).status == JobStatus.queued


def test_runnable_count_counts_what_a_worker_of_the_pool_could_claim(engine: Engine) -> None:
    for pool in ("a", "a", "b"):
        add_spec_job(engine, pool=pool)
    add_job(engine, wait_reason="w")  # pool "default", waiting
    add_job(engine, status=JobStatus.running)
    with Session(engine) as session:
        counts = [sm.runnable_count(session=session, pool=pool) for pool in ("a", "b", "c", None)]
    assert counts == [2, 1, 0, 3]


def test_a_child_cancelled_while_waiting_stays_cancelled_when_its_parent_fails(engine: Engine) -> None:
    parent_id = add_job(engine)
    child = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    with Session(engine) as session:
        sm.request_cancel(session=session, job_id=child)
        runner = claim(session, "w1")
        assert sm.finish(session=session, claim=runner, status=JobStatus.failed, error="diverged")
    assert get_job(engine, child).status == JobStatus.cancelled


@pytest.mark.parametrize("parent_status", [JobStatus.running, JobStatus.failed])
def test_a_child_cancelled_while_a_claim_looks_at_it_stays_cancelled(
    engine: Engine, parent_status: JobStatus
) -> None:
    # The claim finds the parent unfinished (it parks the child) or failed (it fails the child); a cancel lands
    # between its read and that UPDATE.
    parent_id = add_job(engine, status=parent_status)
    child = add_job(engine, parent_job_id=parent_id)

    def cancel() -> None:
        with Session(engine) as other:
            sm.request_cancel(session=other, job_id=child)

    with Session(engine) as late:
        updates = _before_first_update(late, cancel)
        assert sm.claim(session=late, worker="w1") is None
    assert updates
    job = get_job(engine, child)
    assert (job.status, job.wait_reason, job.error) == (JobStatus.cancelled, None, None)


def test_a_child_released_by_someone_else_meanwhile_is_not_released_twice(engine: Engine) -> None:
    parent_id = add_job(engine, status=JobStatus.succeeded)
    child = add_job(engine, parent_job_id=parent_id, wait_reason=sm.waiting_reason(parent_id))
    released_by_other: list[int] = []

    def release() -> None:
        with Session(engine) as other:
            released_by_other.extend(sm.release_waiting_children(session=other, parent_id=parent_id))

    with Session(engine) as late:
        updates = _before_first_update(late, release)
        assert sm.release_waiting_children(session=late, parent_id=parent_id) == []  # one wake-up, not two
    assert updates and released_by_other == [child]
