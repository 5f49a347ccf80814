"""Sweeps: submit (a base spec and a grid or random space; every child made in one transaction), list, show
with the children's metrics, cancel every child."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from api.core import submit, sweeps
from api.core.broker import JobQueue
from api.core.models import MAX_ID, MAX_JOB_ID
from api.core.schemas import SweepImportance, SweepList, SweepOut
from api.core.settings import Settings
from api.core.spec_input import YAML_TYPES
from api.core.state_machine import Principal
from api.core.sweep_importance import importance
from api.core.sweep_spec import METRIC_NAME, SweepSpec
from api.server.auth import PrincipalDep
from api.server.body import read_document
from api.server.deps import SessionDep
from api.server.threads import run_write

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="A sweep's id.")]

_SWEEP_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/SweepSpec"}
            },  # api/server/openapi.py
            **{t: {"schema": {"type": "string", "description": "The same as YAML."}} for t in YAML_TYPES},
        },
    }
}


@router.post("", status_code=201, response_model=SweepOut, openapi_extra=_SWEEP_BODY)
async def submit_sweep(request: Request, principal: PrincipalDep) -> SweepOut:
    """Make one queued job per point of the grid (or per random draw) from the base spec, all or none: a bad
    field, a child that fails validation or too many children is a 422 and nothing is stored. A search
    (`method`) stores the sweep and asks for its first `parallel` children; the space's edges are checked as
    children first."""
    state = request.app.state
    sweep = await read_document(request, SweepSpec)
    return await run_write(
        request, _store_and_enqueue, sweep, principal, state.settings, state.sessions, state.queue
    )


def _store_and_enqueue(
    sweep: SweepSpec,
    principal: Principal,
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: JobQueue,
) -> SweepOut:
    with sessions() as session:
        row = submit.submit_sweep(
            session=session, queue=queue, settings=settings, principal=principal, sweep=sweep
        )
        return sweeps.sweep_out(session=session, row=row)


@router.get("")
def list_sweeps(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,  # the database's OFFSET is 64-bit
) -> SweepList:
    """Sweeps, newest first, each with its children counted by status and its best val_top1."""
    rows, total = sweeps.list_sweeps(session=session, principal=principal, limit=limit, offset=offset)
    return SweepList(items=sweeps.summaries(session=session, sweeps=rows), total=total)


@router.get("/{sweep_id}", responses={404: {"description": "Unknown sweep"}})
def get_sweep(sweep_id: SweepId, session: SessionDep, principal: PrincipalDep) -> SweepOut:
    """The sweep and its children: each one's swept values, status and metrics (best val_top1, latest few-shot)."""
    row = sweeps.get_sweep(session=session, sweep_id=sweep_id, principal=principal)
    return sweeps.sweep_out(session=session, row=row)


@router.get("/{sweep_id}/importance", responses={404: {"description": "Unknown sweep"}})
def get_importance(
    sweep_id: SweepId,
    session: SessionDep,
    principal: PrincipalDep,
    metric: Annotated[str, Query(pattern=METRIC_NAME, description="A logged metric, or best_val_top1.")] = (
        "best_val_top1"
    ),
) -> SweepImportance:
    """Which swept fields mattered to `metric`: fANOVA over the children that succeeded (3 at least)."""
    row = sweeps.get_sweep(session=session, sweep_id=sweep_id, principal=principal)
    out = sweeps.sweep_out(session=session, row=row)
    return importance(out.jobs, out.fields, metric)


@router.post("/{sweep_id}/cancel", status_code=202, responses={404: {"description": "Unknown sweep"}})
def cancel_sweep(sweep_id: SweepId, session: SessionDep, principal: PrincipalDep) -> SweepOut:
    """Cancel every child that has not finished: queued ones at once, running ones within seconds."""
    row = sweeps.cancel_sweep(session=session, sweep_id=sweep_id, principal=principal)
    return sweeps.sweep_out(session=session, row=row)
