"""Searching sweeps: one Optuna study per sweep, stored in vitq's own database, asked for children as earlier
ones end (Optuna's ask/tell), and told how each one ended.

The study lives in Optuna's tables beside vitq's (migration 0008 made them; see there why not Optuna itself),
so the API, every worker and a restarted process all read one study. Children are made by `top_up`, which any
process may run at any time and which is safe to repeat:

- it runs only under the sweep's asking lease (a conditional UPDATE of `sweeps.asker`), so two processes never
  ask at once; a holder that died lets the lease run out after ASK_LEASE_S;
- it first tells the study about children that ended (succeeded: the metric's last value; pruned: pruned;
  failed or cancelled: failed), then gives a job to any trial that was asked for but has none (its asker died
  between the ask and the job's commit), and only then asks for new trials, while fewer than `parallel`
  children are unfinished and fewer than `max_jobs` trials exist;
- a child job records its trial number, unique per sweep, so one trial never gets two jobs.

The supervisor calls it when a child ends, every reaper pass calls it for each open search (a lost worker, a
restarted API, a cancel), and POST /sweeps calls it for the first children. `Pruning` is a child's side of early
stopping: its evaluations are reported to the study, and the sweep's pruner says whether to stop it.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import BaseModel as _OptunaModel
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.core import limits, state_machine
from api.core.errors import InvalidInputError
from api.core.models import Job, JobStatus, MetricPoint, Sweep
from api.core.settings import Settings
from api.core.spec_input import check_spec
from api.core.state_machine import now
from api.core.sweep_spec import (
    Distribution,
    EarlyStop,
    IntUniform,
    LogUniform,
    Point,
    SweepSpec,
    SweepSpecError,
    Uniform,
    child_spec,
)

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would flood the workers' logs

# Optuna's tables (schema 12), for the migration check and Alembic's autogenerate (migrations/env.py).
OPTUNA_TABLES = _OptunaModel.metadata
ASK_LEASE_S = 30.0
PRUNED_AT = "vitq:pruned_at_step"  # a trial's system attribute: the pruner's verdict, once given
# The end state of a child as the study records it.
TRIAL_STATE = {
    JobStatus.succeeded: TrialState.COMPLETE,
    JobStatus.pruned: TrialState.PRUNED,
    JobStatus.failed: TrialState.FAIL,
    JobStatus.cancelled: TrialState.FAIL,
}
Enqueue = list[tuple[int, str]]  # (job id, pool) of each child made: send them to the broker after the call


@lru_cache
def storage(url: str) -> RDBStorage:
    """Optuna's storage on vitq's database, one per process and URL. Its tables are vitq's (migration 0008)."""
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 30, "check_same_thread": False}}
        if url.startswith("sqlite")
        else {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    )
    return RDBStorage(
        url, engine_kwargs=engine_kwargs, skip_compatibility_check=True, skip_table_creation=True
    )


def study_name(sweep_id: int) -> str:
    return f"vitq-sweep-{sweep_id}"


def open_study(*, url: str, sweep_id: int, spec: SweepSpec, seed: int | None = None) -> optuna.Study:
    """The sweep's study (made on first use) with its sampler, seeded with `seed`, and its pruner."""
    direction = StudyDirection.MAXIMIZE if spec.objective.maximize else StudyDirection.MINIMIZE
    return optuna.create_study(
        storage=storage(url),
        study_name=study_name(sweep_id),
        direction=direction,
        sampler=sampler(spec, spec.seed if seed is None else seed),
        pruner=pruner(spec),
        load_if_exists=True,
    )


# ------------------------------------------------------------------------------------------------ the space
def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def distribution(values: Distribution) -> BaseDistribution:
    """A space entry as Optuna's distribution. A list of mappings or lists (a whole `data.augment`) is asked
    for by index: Optuna's choices are scalars."""
    if isinstance(values, list):
        choices = values if all(_scalar(v) for v in values) else list(range(len(values)))
        return CategoricalDistribution(choices)
    if isinstance(values, IntUniform):
        return IntDistribution(*values.int_uniform)
    if isinstance(values, LogUniform):
        return FloatDistribution(*values.log_uniform, log=True)
    assert isinstance(values, Uniform)
    return FloatDistribution(*values.uniform)


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    assert spec.space is not None
    return {path: distribution(values) for path, values in spec.space.items()}


def point_of(spec: SweepSpec, params: dict[str, Any]) -> Point:
    """A trial's params as the child's field values (an index back to its list's value)."""
    assert spec.space is not None
    point = {}
    for path, values in spec.space.items():
        value = params[path]
        if isinstance(values, list) and not all(_scalar(v) for v in values):
            value = values[value]
        point[path] = value
    return point


def sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The method's sampler. Each ask builds it anew in whatever process asks, so a drawing sampler's seed is
    the sweep's seed plus the number of trials so far: a fixed seed would draw the same first point every time."""
    if spec.method == "tpe":
        # constant_liar: trials still running count as poor, so parallel asks spread out instead of piling up.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=spec.slots > 1)
    if (
        spec.method == "grid"
    ):  # its seed shuffles the grid, and trial N takes point N: the same seed every time
        assert spec.space is not None
        grid = {path: list(distribution(values).choices) for path, values in spec.space.items()}  # type: ignore[attr-defined]
        return optuna.samplers.GridSampler(grid, seed=spec.seed)
    if (
        spec.method == "qmc"
    ):  # a low-discrepancy sequence: its place comes from the study, its seed stays fixed
        return optuna.samplers.QMCSampler(
            seed=spec.seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),  # lists are drawn at random
            warn_independent_sampling=False,
        )
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    stop = spec.early_stop
    if stop is None:
        return optuna.pruners.NopPruner()
    if stop.rule == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=stop.startup_jobs, n_warmup_steps=stop.min_steps)
    if stop.rule == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=stop.min_steps, max_resource=_max_steps(spec), reduction_factor=stop.reduction_factor
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=stop.min_steps, reduction_factor=stop.reduction_factor, min_early_stopping_rate=0
    )


def _max_steps(spec: SweepSpec) -> int | str:
    train = spec.base.get("train")
    steps = train.get("steps") if isinstance(train, dict) else None
    return steps if isinstance(steps, int) and "train.steps" not in spec.fields else "auto"


# ------------------------------------------------------------------------------------------------ asking
def top_up(
    *, sessions: sessionmaker[Session], url: str, sweep_id: int, max_attempts: int, settings: Settings
) -> Enqueue:
    """Tell the study how ended children did, give orphaned trials their jobs, and ask for new children while
    the sweep has room. Returns the jobs made, to enqueue (after this returns: they are committed). Does
    nothing while another process holds the sweep's asking lease. Each child is held to its owner's job-size
    limits as they are now (`settings` gives the defaults): a combination of values past one fails its trial."""
    token = uuid.uuid4().hex
    if not _lease(sessions, sweep_id, token):
        return []
    try:
        return _top_up(
            sessions=sessions,
            url=url,
            sweep_id=sweep_id,
            max_attempts=max_attempts,
            settings=settings,
            token=token,
        )
    finally:
        with sessions() as session:
            session.execute(
                update(Sweep).where(Sweep.id == sweep_id, Sweep.asker == token).values(asker=None)
            )
            session.commit()


def _lease(sessions: sessionmaker[Session], sweep_id: int, token: str) -> bool:
    """Take (or, with our own token, extend) the sweep's asking lease; committed. False: someone else has it."""
    moment = now()
    with sessions() as session:
        result = session.execute(
            update(Sweep)
            .where(
                Sweep.id == sweep_id,
                Sweep.method.is_not(None),
                Sweep.ended_at.is_(None),
                or_(Sweep.asker.is_(None), Sweep.asker == token, Sweep.asking_until < moment),
            )
            .values(asker=token, asking_until=moment + timedelta(seconds=ASK_LEASE_S))
        )
        session.commit()
        return bool(getattr(result, "rowcount", 0) == 1)


def _top_up(
    *,
    sessions: sessionmaker[Session],
    url: str,
    sweep_id: int,
    max_attempts: int,
    settings: Settings,
    token: str,
) -> Enqueue:
    with sessions() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        spec = SweepSpec.model_validate(sweep.spec)
        cancelled, owner = sweep.cancelled_at is not None, sweep.owner
        allowed = limits.for_owner(session=session, owner=owner, settings=settings)
        children = {
            job.trial: JobStatus(job.status)
            for job in session.scalars(select(Job).where(Job.sweep_id == sweep_id))
            if job.trial is not None
        }
        session.rollback()
    study = open_study(url=url, sweep_id=sweep_id, spec=spec)
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        status = children.get(trial.number)
        if trial.state == TrialState.RUNNING and status is not None and status.finished:
            _tell(study, sessions=sessions, sweep_id=sweep_id, number=trial.number, status=status, spec=spec)
    made: Enqueue = []
    unfinished = sum(not status.finished for status in children.values())
    for trial in trials:  # asked for, but its asker died before the job was stored: it gets its job now
        if trial.state == TrialState.RUNNING and trial.number not in children:
            if cancelled:
                tell(study, trial.number, TrialState.FAIL)
                continue
            made += _make_child(
                sessions, study, trial.number, trial.params, spec, sweep_id, owner, max_attempts, allowed
            )
            unfinished += 1
    asked = len(trials)
    while not cancelled and asked < spec.budget and unfinished < spec.slots:
        if not _lease(sessions, sweep_id, token):
            return made  # we stalled past the lease: the next holder carries on
        study.sampler = sampler(spec, spec.seed + asked)
        new = study.ask(distributions(spec))
        asked += 1
        made += _make_child(
            sessions, study, new.number, new.params, spec, sweep_id, owner, max_attempts, allowed
        )
        unfinished += 1
    if (cancelled or asked >= spec.budget) and not unfinished and _all_told(study):
        with sessions() as session:
            session.execute(update(Sweep).where(Sweep.id == sweep_id).values(ended_at=now()))
            session.commit()
    return made


def _all_told(study: optuna.Study) -> bool:
    return not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _make_child(
    sessions: sessionmaker[Session],
    study: optuna.Study,
    number: int,
    params: dict[str, Any],
    spec: SweepSpec,
    sweep_id: int,
    owner: str,
    max_attempts: int,
    allowed: limits.JobLimits,
) -> Enqueue:
    """The trial's job, queued; [] when another process stored it first, or when its spec is refused (the
    trial then fails: the space's edges passed at submit, so only a combination can be refused here, or a
    limit an admin lowered since)."""
    point = point_of(spec, params)
    try:
        job_spec = check_spec(child_spec(spec, point))
        limits.check(job_spec, allowed)
    except (InvalidInputError, SweepSpecError) as error:
        log.warning("sweep %s: trial %s (%s) refused: %s", sweep_id, number, point, error)
        tell(study, number, TrialState.FAIL)
        return []
    with sessions() as session:
        parent_id = job_spec.init.from_job if job_spec.init is not None else None
        parent = session.get(Job, parent_id) if parent_id is not None else None
        job = state_machine.submit(
            session=session, spec=job_spec, max_attempts=max_attempts, parent=parent, owner=owner
        )
        job.sweep_id, job.trial = sweep_id, number
        try:
            session.commit()
        except IntegrityError:  # (sweep, trial) is unique: another asker made this trial's job
            session.rollback()
            return []
        if job.wait_reason is not None and not state_machine.settle_waiting_job(session=session, job=job):
            return []  # it waits for its parent; releasing it enqueues it
        log.info("sweep %s: trial %s is job %s (%s)", sweep_id, number, job.id, point)
        return [(job.id, job.pool)]


def _tell(
    study: optuna.Study,
    *,
    sessions: sessionmaker[Session],
    sweep_id: int,
    number: int,
    status: JobStatus,
    spec: SweepSpec,
) -> None:
    state = TRIAL_STATE[status]
    value = None
    if state == TrialState.COMPLETE:
        with sessions() as session:
            value = last_value(session=session, sweep_id=sweep_id, trial=number, metric=spec.objective.name)
            session.rollback()
        if value is None or not math.isfinite(value):
            state = TrialState.FAIL  # it never logged the metric: nothing to learn from
    tell(study, number, state, value if state == TrialState.COMPLETE else None)


def tell(study: optuna.Study, number: int, state: TrialState, value: float | None = None) -> None:
    """Record how a trial ended. Through a plain sampler: GridSampler's after_trial stops the study when the
    grid is done, which Optuna allows only inside study.optimize. skip_if_finished: a stalled former lease
    holder may have told it meanwhile."""
    study.sampler = optuna.samplers.RandomSampler()
    study.tell(number, value, state=state, skip_if_finished=True)


def last_value(*, session: Session, sweep_id: int, trial: int, metric: str) -> float | None:
    return session.scalar(
        select(MetricPoint.value)
        .join(Job, Job.id == MetricPoint.job_id)
        .where(Job.sweep_id == sweep_id, Job.trial == trial, MetricPoint.name == metric)
        .order_by(MetricPoint.step.desc(), MetricPoint.id.desc())
        .limit(1)
    )


def sweep_of(*, session: Session, job_id: int) -> int:
    """The searching sweep a job is a child of; 0 for any other job."""
    found = session.scalar(
        select(Sweep.id)
        .join(Job, Job.sweep_id == Sweep.id)
        .where(Job.id == job_id, Job.trial.is_not(None), Sweep.method.is_not(None))
    )
    session.rollback()
    return found or 0


def open_searches(*, session: Session) -> list[int]:
    """Searches that may still ask or tell (the reaper tops each up)."""
    ids = session.scalars(select(Sweep.id).where(Sweep.method.is_not(None), Sweep.ended_at.is_(None))).all()
    session.rollback()
    return list(ids)


# ------------------------------------------------------------------------------------------------ pruning
class Pruning:
    """A running child's reports to its sweep's pruner: each evaluation of the metric, then whether to stop."""

    def __init__(
        self, *, url: str, sweep_id: int, trial: int, spec: SweepSpec, stop: EarlyStop, last_step: int
    ) -> None:
        self.url, self.sweep_id, self.trial, self.spec = url, sweep_id, trial, spec
        self.last_step = last_step  # the child's train.steps: a verdict there would stop nothing
        self.metric = spec.objective.name
        self.stop = stop
        self._study: optuna.Study | None = None

    @classmethod
    def of(cls, *, session: Session, url: str, job_id: int) -> Pruning | None:
        """The pruning of a job whose sweep stops poor children early; None for any other job."""
        row = session.execute(
            select(Job.trial, Sweep.id, Sweep.spec, Job.total_steps)
            .join(Sweep, Sweep.id == Job.sweep_id)
            .where(Job.id == job_id, Job.trial.is_not(None), Sweep.method.is_not(None))
        ).one_or_none()
        session.rollback()
        if row is None:
            return None
        trial, sweep_id, raw, last_step = row
        spec = SweepSpec.model_validate(raw)
        if spec.early_stop is None:
            return None
        return cls(
            url=url, sweep_id=sweep_id, trial=trial, spec=spec, stop=spec.early_stop, last_step=last_step
        )

    def report(self, points: Iterable[tuple[str, int, float]]) -> bool:
        """Report the metric's values among `points` (name, step, value); True when the pruner says stop.
        A database error reports nothing (the next evaluation reports again)."""
        values = [(step, value) for name, step, value in points if name == self.metric]
        if not values:
            return False
        try:
            if self._study is None:
                self._study = open_study(url=self.url, sweep_id=self.sweep_id, spec=self.spec)
            study, store = self._study, storage(self.url)
            study_id = store.get_study_id_from_name(study_name(self.sweep_id))
            trial_id = store.get_trial_id_from_study_id_trial_number(study_id, self.trial)
            frozen = store.get_trial(trial_id)
            if frozen.state != TrialState.RUNNING:
                return False
            if PRUNED_AT in frozen.system_attrs:  # a verdict stands (its attempt may have died before ending)
                return True
            trial = optuna.trial.Trial(study, trial_id)
            reported = set(frozen.intermediate_values)
            # One verdict per evaluation, in step order: ASHA judges each rung by the value at the trial's last
            # step, so a batch of evaluations read at once must not be judged by its last one alone.
            for step, value in sorted(values):
                if step in reported:  # a resumed attempt reads its history again
                    continue
                trial.report(value, step)
                # At its last step a child has ended: it ran to the end (ASHA would still judge its top rung).
                if step < self.last_step and trial.should_prune():
                    store.set_trial_system_attr(trial_id, PRUNED_AT, step)
                    return True
            return False
        except (SQLAlchemyError, optuna.exceptions.OptunaError, KeyError) as error:
            log.warning(
                "sweep %s trial %s: could not report to the pruner (%s)", self.sweep_id, self.trial, error
            )
            return False
