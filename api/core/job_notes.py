"""Tags and notes on a job: its owner's own labels and free text, changed by PATCH /jobs/{id}.

Only the owner changes them: a job another owner made is not found (as on every route), and an admin, who sees
every job, reads them but does not write another's notes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from api.core.errors import JobNotFoundError
from api.core.models import Job
from api.core.reads import find_job
from api.core.state_machine import Principal

# A tag: a short label without spaces, commas or control characters ("baseline", "lr-sweep", "paper/fig3").
Tag = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[^\s,\x00-\x1f\x7f]+$")]


class JobNotesIn(BaseModel):
    """PATCH /jobs/{id}: the fields given replace the stored ones; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    tags: list[Tag] | None = Field(None, max_length=20, description="Up to 20 labels; [] clears them.")
    notes: Annotated[str, StringConstraints(max_length=10_000, pattern=r"^[^\x00]*$")] | None = Field(
        None, description="Free text; empty clears it."
    )


def annotate(*, session: Session, job_id: int, principal: Principal, change: JobNotesIn) -> Job:
    job = find_job(session=session, job_id=job_id, principal=principal)
    if job is None or job.owner != principal.owner:
        raise JobNotFoundError(job_id)
    if change.tags is not None:
        job.tags = list(dict.fromkeys(change.tags))  # each tag once, in the order given
    if "notes" in change.model_fields_set:
        job.notes = change.notes or None
    session.commit()
    return job
