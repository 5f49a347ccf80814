"""Searching sweeps against real databases (PostgreSQL and SQLite, a fresh one per test): Optuna's study in
vitq's tables, children asked for as earlier ones end, no trial lost or asked for twice across crashes and
racing processes, the study told how each child ended, and the pruner's verdicts."""

from __future__ import annotations

import threading
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.core import limits, search, sweeps
from api.core.models import LOCAL_OWNER, Job, JobStatus, MetricPoint, Sweep
from api.core.settings import Settings
from api.core.sweep_spec import SweepSpec
from tests.api.conftest import TINY_SPEC

AUGMENTS = [{"crop_scale": [0.5, 1.0], "flip": False}, "none"]
BASE = {**TINY_SPEC, "train": {"steps": 40, "batch_size": 32, "eval_every": 10}}


def search_spec(**changes: Any) -> SweepSpec:
    body = {
        "name": "s",
        "base": BASE,
        "method": "tpe",
        "space": {
            "optim.lr": {"log_uniform": [1e-4, 1e-2]},
            "optim.warmup_steps": {"int_uniform": [0, 20]},
            "data.augment": AUGMENTS,  # not all scalars: asked for by index
        },
        "max_jobs": 5,
        "parallel": 2,
        **changes,
    }
    return SweepSpec.model_validate(body)


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def new_search(engine: Engine, spec: SweepSpec) -> int:
    with Session(engine) as session:
        row, _ = sweeps.create_sweep(session=session, sweep=spec, children=[], max_attempts=3)
        session.commit()
        return row.id


def top_up(engine: Engine, sweep_id: int) -> list[int]:
    made = search.top_up(
        sessions=sessionmaker(engine),
        url=url_of(engine),
        sweep_id=sweep_id,
        max_attempts=3,
        settings=Settings(),
    )
    return [job_id for job_id, _pool in made]


def children(engine: Engine, sweep_id: int) -> list[Job]:
    with Session(engine) as session:
        return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial)))


def end(engine: Engine, job_id: int, status: JobStatus, top1: float | None = None) -> None:
    with Session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
        if top1 is not None:
            rows = [
                {"job_id": job_id, "name": "val_top1", "step": s, "value": v, "time": 0.0}
                for s, v in ((10, 0.1), (40, top1))
            ]
            session.execute(insert(MetricPoint), rows)
        session.commit()


def trials(engine: Engine, sweep_id: int, spec: SweepSpec) -> list[optuna.trial.FrozenTrial]:
    return search.open_study(url=url_of(engine), sweep_id=sweep_id, spec=spec).get_trials()


def test_a_search_asks_parallel_children_then_one_per_ended_child(engine: Engine) -> None:
    spec = search_spec()
    sweep_id = new_search(engine, spec)
    first = top_up(engine, sweep_id)
    assert len(first) == 2 and top_up(engine, sweep_id) == []  # room for two; asking again asks nothing
    jobs = children(engine, sweep_id)
    assert [(j.trial, j.status) for j in jobs] == [(0, JobStatus.queued), (1, JobStatus.queued)]
    for job in jobs:  # each child is its trial's point, within the space, named after it
        params = trials(engine, sweep_id, spec)[job.trial].params
        assert job.spec["optim"]["lr"] == params["optim.lr"] and 1e-4 <= params["optim.lr"] <= 1e-2
        assert job.spec["optim"]["warmup_steps"] == params["optim.warmup_steps"]
        assert job.spec["data"]["augment"] == AUGMENTS[params["data.augment"]]
    assert jobs[0].spec["optim"]["lr"] != jobs[1].spec["optim"]["lr"]  # a fresh seed per ask

    end(engine, jobs[0].id, JobStatus.succeeded, top1=0.75)
    end(engine, jobs[1].id, JobStatus.failed)
    assert len(top_up(engine, sweep_id)) == 2
    told = trials(engine, sweep_id, spec)
    assert (told[0].state, told[0].value) == (TrialState.COMPLETE, 0.75)  # the metric's last value
    assert told[1].state == TrialState.FAIL
    assert [t.state for t in told[2:]] == [TrialState.RUNNING] * 2

    for job in children(engine, sweep_id)[2:]:
        end(engine, job.id, JobStatus.pruned)
    assert len(top_up(engine, sweep_id)) == 1  # the fifth and last
    assert [t.state for t in trials(engine, sweep_id, spec)[2:4]] == [TrialState.PRUNED] * 2
    [last] = children(engine, sweep_id)[4:]
    assert top_up(engine, sweep_id) == []
    end(engine, last.id, JobStatus.succeeded, top1=0.5)
    assert top_up(engine, sweep_id) == []
    with Session(engine) as session:
        assert session.get(Sweep, sweep_id).ended_at is not None  # type: ignore[union-attr]
    assert search.open_searches(session=Session(engine)) == []
    assert len(trials(engine, sweep_id, spec)) == 5


def test_a_trial_asked_for_by_a_process_that_died_gets_its_job_and_none_is_asked_twice(
    engine: Engine,
) -> None:
    spec = search_spec(parallel=3)
    sweep_id = new_search(engine, spec)
    study = search.open_study(url=url_of(engine), sweep_id=sweep_id, spec=spec)
    orphan = study.ask(search.distributions(spec))  # the asker died before storing its job
    made = top_up(engine, sweep_id)
    assert [j.trial for j in children(engine, sweep_id)] == [0, 1, 2]  # the orphan's job, then two new asks
    assert children(engine, sweep_id)[0].spec["optim"]["lr"] == orphan.params["optim.lr"]
    assert len(made) == 3 and len(trials(engine, sweep_id, spec)) == 3


def test_racing_processes_ask_once_between_them(engine: Engine) -> None:
    spec = search_spec(parallel=3, max_jobs=3)
    sweep_id = new_search(engine, spec)
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(top_up(engine, sweep_id))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whoever held the lease asked for three; a later holder found no room. Never more than the budget.
    assert sorted(len(r) for r in results)[-1] == 3 and sum(len(r) for r in results) == 3
    assert len(trials(engine, sweep_id, spec)) == 3
    assert [j.trial for j in children(engine, sweep_id)] == [0, 1, 2]


def test_a_held_lease_keeps_others_out_until_it_runs_out(engine: Engine) -> None:
    sweep_id = new_search(engine, search_spec())
    with Session(engine) as session:
        session.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id)
            .values(asker="someone", asking_until=search.now() + search.timedelta(seconds=30))
        )
        session.commit()
    assert top_up(engine, sweep_id) == []
    with Session(engine) as session:
        session.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id)
            .values(asking_until=search.now() - search.timedelta(seconds=1))
        )
        session.commit()
    assert len(top_up(engine, sweep_id)) == 2  # its holder died: the lease ran out


def test_a_cancelled_search_asks_no_more_and_fails_its_open_trials(engine: Engine) -> None:
    spec = search_spec()
    sweep_id = new_search(engine, spec)
    first, second = top_up(engine, sweep_id)
    end(engine, first, JobStatus.cancelled)
    end(engine, second, JobStatus.cancelled)
    with Session(engine) as session:
        session.execute(update(Sweep).where(Sweep.id == sweep_id).values(cancelled_at=search.now()))
        session.commit()
    assert top_up(engine, sweep_id) == []
    assert [t.state for t in trials(engine, sweep_id, spec)] == [TrialState.FAIL] * 2
    assert search.open_searches(session=Session(engine)) == []


def test_a_child_past_its_owners_job_size_limit_fails_its_trial_and_makes_no_job(engine: Engine) -> None:
    """Submit checks a space's edges only, one field at a time: a combination past a limit (or a limit an admin
    lowered since) is found when the child is asked for."""
    space = {"train.steps": [10, 40], "train.batch_size": [8, 32]}
    spec = search_spec(space=space, method="random", max_jobs=12)
    sweep_id = new_search(engine, spec)
    with Session(engine) as session:  # 40 x 32 = 1,280 images: over; every other combination passes
        limits.set_own(session=session, owner=LOCAL_OWNER, values={"max_job_images": 1000})
    made = []
    for _ in range(spec.budget):
        made += top_up(engine, sweep_id)
        for job in children(engine, sweep_id):
            if not JobStatus(job.status).finished:
                end(engine, job.id, JobStatus.succeeded, top1=0.5)
    told = trials(engine, sweep_id, spec)
    points = [search.point_of(spec, t.params) for t in told]
    over = [t for t, p in zip(told, points, strict=True) if p["train.steps"] * p["train.batch_size"] > 1000]
    assert over and all(t.state == TrialState.FAIL for t in over)
    jobs = children(engine, sweep_id)
    assert jobs and all(j.spec["train"]["steps"] * j.spec["train"]["batch_size"] <= 1000 for j in jobs)
    assert len(jobs) == len(told) - len(over)


def test_asha_stops_a_child_that_falls_behind_at_a_rung(engine: Engine) -> None:
    spec = search_spec(
        max_jobs=3, parallel=3, early_stop={"rule": "asha", "min_steps": 10, "reduction_factor": 2}
    )
    sweep_id = new_search(engine, spec)
    good, poor, late_good = top_up(engine, sweep_id)
    url = url_of(engine)

    def pruning(job_id: int) -> search.Pruning:
        with Session(engine) as session:
            found = search.Pruning.of(session=session, url=url, job_id=job_id)
        assert found is not None
        return found

    assert not pruning(good).report([("loss", 10, 2.0), ("val_top1", 10, 0.6)])  # alone at the rung: kept
    assert pruning(poor).report([("val_top1", 10, 0.2)])  # below the better half of {0.6, 0.2}
    assert not pruning(late_good).report([("val_top1", 10, 0.9)])
    assert not pruning(good).report([("loss", 20, 1.0)])  # no evaluation, no verdict
    # At its last step a child has ended, whatever the pruner would say: it ran to the end. (Below `good` at
    # rung 1, step 20, it would be stopped there, were 20 not its last step.)
    assert not pruning(good).report([("val_top1", 20, 0.9)])
    ending = pruning(late_good)
    ending.last_step = 20
    assert not ending.report([("val_top1", 20, 0.0)])
    # A resumed attempt reports its history again: the same steps, no error, the same verdict.
    assert pruning(poor).report([("val_top1", 10, 0.2)])
    study = search.open_study(url=url, sweep_id=sweep_id, spec=spec)
    assert study.get_trials()[1].intermediate_values == {10: 0.2}
    # A child without early stopping has no pruning; nor has a job outside a search.
    plain = new_search(engine, search_spec())
    [job, _] = top_up(engine, plain)
    with Session(engine) as session:
        assert search.Pruning.of(session=session, url=url, job_id=job) is None
