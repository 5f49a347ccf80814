"""Limits on the size of one job: its model's parameters, its image size, the images it trains on, the checkpoints
it keeps and the log it writes. Each is a setting for every owner (VITQ_MAX_*, off by default) that an admin may
override for one owner (a row of owner_limits: a number, or None for no limit whatever the default).

A submit over one is a 422 naming the field, the value and the limit, and nothing is stored; a sweep is refused
when any child is over. max_log_bytes cannot be known at submit: the worker applies it where train.log is
written (worker/log_cap.py), and the job trains on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from api.core.errors import InvalidInputError
from api.core.models import Job, OwnerLimit
from api.core.settings import Settings
from api.core.state_machine import Principal
from vit.config import JobSpec
from vit.model_size import known_classes, model_parameters

# Every limit, by its one name (the setting is VITQ_ and the name in capitals), and what it bounds.
LIMITS: dict[str, str] = {
    "max_job_params": "the model's parameters",
    "max_image_size": "model.image_size (pixels a side)",
    "max_job_images": "train.steps x train.batch_size",
    "max_keep_checkpoints": "train.keep_checkpoints",
    "max_log_bytes": "the bytes of a job's train.log (the worker stops copying the trainer's output there)",
}


@dataclass(frozen=True)
class JobLimits:
    """One owner's limits: `values` by name (None: no limit), and which of them an admin set for this owner."""

    values: Mapping[str, int | None]
    own: frozenset[str]

    def whose(self, name: str) -> str:
        return "this owner's" if name in self.own else "the service's"


# Built once and run past the ORM: every submit reads it.
_OWNERS_OWN = select(OwnerLimit.name, OwnerLimit.value).where(OwnerLimit.owner == bindparam("owner"))


def for_owner(*, session: Session, owner: str, settings: Settings) -> JobLimits:
    """The limits that hold for `owner`: the owner's own where an admin set one, else the settings'."""
    rows = session.connection().execute(_OWNERS_OWN, {"owner": owner}).all()
    return _holding([(row.name, row.value) for row in rows], settings)


def for_principal(*, session: Session, principal: Principal, settings: Settings) -> JobLimits:
    """The limits that hold for the principal's owner: read with its token when it had one."""
    if principal.own_limits is None:
        return for_owner(session=session, owner=principal.owner, settings=settings)
    return _holding(principal.own_limits, settings)


def _holding(own_rows: Iterable[tuple[str, int | None]], settings: Settings) -> JobLimits:
    own = {name: value for name, value in own_rows if name in LIMITS}
    values = {name: own[name] if name in own else getattr(settings, name) for name in LIMITS}
    return JobLimits(values=values, own=frozenset(own))


def check(spec: JobSpec, limits: JobLimits) -> None:
    """InvalidInputError (a 422) with one detail per limit the job, as it will run, is over."""
    spec = spec.resolved()  # a recipe may set the model or the steps
    train = spec.train
    classes = known_classes(spec.data)
    unknown_head = (
        "" if classes is not None else " (the head not counted: the class count is in the dataset's files)"
    )
    measured: list[tuple[str, tuple[str, ...], int, str]] = [
        (
            "max_job_params",
            ("model", "variant"),
            (params := model_parameters(spec.model, num_classes=classes or 0)),
            f"model has {params:,} parameters{unknown_head}",
        ),
        (
            "max_image_size",
            ("model", "image_size"),
            spec.model.image_size,
            f"image_size is {spec.model.image_size}",
        ),
        (
            "max_job_images",
            ("train", "steps"),
            (images := train.steps * train.batch_size),
            f"the job trains on {images:,} images (steps {train.steps:,} x batch_size {train.batch_size:,})",
        ),
        (
            "max_keep_checkpoints",
            ("train", "keep_checkpoints"),
            train.keep_checkpoints,
            f"keep_checkpoints is {train.keep_checkpoints}",
        ),
    ]
    details: list[dict[str, Any]] = []
    for name, loc, value, what in measured:
        limit = limits.values[name]
        if limit is not None and value > limit:
            why = f"{what}; {limits.whose(name)} limit is {limit:,} ({name})"
            details.append({"loc": ("body", *loc), "msg": why, "type": "limit_exceeded"})
    if details:
        raise InvalidInputError(details)


def log_limit(*, session: Session, job_id: int, settings: Settings) -> int | None:
    """The most bytes the job's train.log may hold (its owner's max_log_bytes); None: no limit."""
    owner = session.scalar(select(Job.owner).where(Job.id == job_id))
    if owner is None:
        return settings.max_log_bytes
    return for_owner(session=session, owner=owner, settings=settings).values["max_log_bytes"]


def set_own(*, session: Session, owner: str, values: Mapping[str, int | None]) -> None:
    """Set `owner`'s own limits (committed); a value None means no limit for this owner."""
    unknown = sorted(set(values) - set(LIMITS))
    if unknown:
        raise ValueError(f"unknown limits {', '.join(unknown)}; the limits are {', '.join(LIMITS)}")
    session.execute(delete(OwnerLimit).where(OwnerLimit.owner == owner, OwnerLimit.name.in_(list(values))))
    session.add_all(OwnerLimit(owner=owner, name=name, value=value) for name, value in values.items())
    session.commit()


def unset_own(*, session: Session, owner: str, names: Iterable[str]) -> int:
    """Drop `owner`'s own values of `names` (committed): the service's default holds again. How many there were."""
    result = session.execute(
        delete(OwnerLimit).where(OwnerLimit.owner == owner, OwnerLimit.name.in_(list(names)))
    )
    session.commit()
    return int(getattr(result, "rowcount", 0))


def all_own(*, session: Session) -> dict[str, dict[str, int | None]]:
    """Every owner's own limits: {owner: {name: value}}."""
    rows = session.execute(select(OwnerLimit).order_by(OwnerLimit.owner, OwnerLimit.name)).scalars()
    found: dict[str, dict[str, int | None]] = {}
    for row in rows:
        found.setdefault(row.owner, {})[row.name] = row.value
    return found
