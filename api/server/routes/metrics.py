"""Metric series of a job, columnar, downsampled by the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.core import reads
from api.core.errors import JobNotFoundError
from api.core.metric_queries import query_metrics
from api.core.models import MAX_ID
from api.core.schemas import MetricsOut
from api.server.auth import PrincipalDep
from api.server.deps import NO_NUL, JobId, SessionDep

router = APIRouter(tags=["metrics"])


@router.get("/jobs/{job_id}/metrics", response_model=MetricsOut, responses={404: {}})
def get_metrics(
    job_id: JobId,
    session: SessionDep,
    principal: PrincipalDep,
    names: Annotated[
        str | None,
        Query(max_length=10_000, pattern=NO_NUL, description="Comma-separated metric names; default all."),
    ] = None,
    since: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="A previous answer's cursor: only newer points.")
    ] = None,
    max_points: Annotated[int, Query(ge=10, le=1_000_000, description="Point budget per series.")] = 1000,
) -> Response:
    reads.get_job(session=session, job_id=job_id, principal=principal)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    out = query_metrics(session=session, job_id=job_id, names=wanted, since=since, max_points=max_points)
    if out is None:
        raise JobNotFoundError(job_id)
    # Serialized by pydantic-core straight to JSON: ~10x faster than the generic encoder on 100k floats.
    return Response(out.model_dump_json(), media_type="application/json")
