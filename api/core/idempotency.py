"""POST /jobs with an `Idempotency-Key`: the same key from the same owner stands for one job.

The key is stored on the job under a UNIQUE (owner, idempotency_key) index. A retry finds the first job by a read
first (the common case, and it must not count against a quota the first job now fills); two requests racing
with one key both pass that read, and the index lets exactly one INSERT commit: the other rolls back and reads
the winner. The spec's hash is stored too, so a key reused for a different spec is a 422, not a silent replay.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.errors import invalid
from api.core.models import Job
from vit.config import JobSpec

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255  # jobs.idempotency_key


def check_key(key: str | None) -> str | None:
    """The header's key, or a 422 for one the column cannot hold."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or "\0" in key:
        raise invalid((), f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", "idempotency_key")
    return key


def spec_hash(spec: JobSpec) -> str:
    """The validated spec's hash: the same spec sent as JSON or YAML, or with defaults spelled out, is equal."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def first_job(*, session: Session, owner: str, key: str, request_hash: str) -> Job | None:
    """The job this owner already made with `key`; a 422 when it was made from a different spec."""
    job = session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise invalid(
            (),
            f"Idempotency-Key {key!r} was used for job {job.id} with a different spec",
            "idempotency_key_reused",
        )
    return job
