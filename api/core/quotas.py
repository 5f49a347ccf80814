"""Per-owner quotas on POST /jobs (settings max_queued_jobs, max_gpus): a submit over one is refused
(QuotaExceededError, a 429: it may pass later) naming the limit. max_running_jobs never refuses: the claim skips an
owner at it (api/state_machine.claim), so the job waits. A job too large at any time is a 422 (api/core/limits.py).

On PostgreSQL the checks take the owner's advisory lock (api/state_machine.lock_owner) until the submit
commits, so submits racing for an owner's last queued slot or GPU are decided one at a time. On SQLite they
read, then write: concurrent submits may both pass (one person on a laptop).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.errors import QuotaExceededError
from api.core.models import Job, JobStatus
from api.core.settings import Settings
from api.core.state_machine import lock_owner
from vit.config import JobSpec

UNFINISHED = (JobStatus.queued, JobStatus.running)


def gpus_of(spec: JobSpec) -> int:
    """The GPUs a job asks for: one per process, unless it asks for the CPU."""
    resources = spec.resources
    return 0 if resources.device == "cpu" else resources.nodes * resources.procs_per_node


def check(*, session: Session, owner: str, specs: Sequence[JobSpec], settings: Settings) -> None:
    """Raise QuotaExceededError if storing the jobs of `specs` (one submit, or a sweep's children) for `owner` would exceed a
    hard quota."""
    if settings.max_queued_jobs is not None or settings.max_gpus is not None:
        lock_owner(session=session, owner=owner)
    if settings.max_queued_jobs is not None:
        queued = session.scalar(
            select(func.count()).select_from(Job).where(Job.owner == owner, Job.status == JobStatus.queued)
        )
        if (queued or 0) + len(specs) > settings.max_queued_jobs:
            why = f"{owner} has {queued} jobs queued and asks for {len(specs)} more"
            _refuse("max_queued_jobs", why, settings.max_queued_jobs)
    if settings.max_gpus is not None:
        stored = session.scalars(select(Job.spec).where(Job.owner == owner, Job.status.in_(UNFINISHED))).all()
        held = sum(gpus_of(JobSpec.model_validate(s)) for s in stored)
        asked = sum(gpus_of(spec) for spec in specs)
        if held + asked > settings.max_gpus:
            why = f"{owner}'s unfinished jobs ask for {held} GPUs and this submit for {asked}"
            _refuse("max_gpus", why, settings.max_gpus)


def _refuse(limit: str, why: str, value: int) -> None:
    raise QuotaExceededError(f"quota {limit} ({value}) reached: {why}")
