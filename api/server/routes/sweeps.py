"""Sweeps: submit (a base spec and a grid or random space; every child made in one transaction), list, show
with the children's metrics, cancel every child."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.core import quotas, state_machine, sweeps
from api.core.broker import JobQueue
from api.core.errors import InvalidInputError, invalid
from api.core.models import MAX_ID, MAX_JOB_ID, Job
from api.core.schemas import SweepList, SweepOut
from api.core.settings import Settings
from api.core.spec_input import YAML_TYPES, check_spec, confine_paths, load_document
from api.core.state_machine import Principal
from api.core.sweep_spec import Point, SweepSpec, SweepSpecError, child_spec, points
from api.server.auth import PrincipalDep
from api.server.body import read_body
from api.server.deps import SessionDep
from api.server.routes.jobs import may_read_job, parent_of
from vit.config import JobSpec

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="A sweep's id.")]

_SWEEP_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SweepSpec.model_json_schema()},
            **{t: {"schema": {"type": "string", "description": "The same as YAML."}} for t in YAML_TYPES},
        },
    }
}


@router.post("", status_code=201, response_model=SweepOut, openapi_extra=_SWEEP_BODY)
async def submit_sweep(request: Request, principal: PrincipalDep) -> SweepOut:
    """Make one queued job per point of the grid (or per random draw) from the base spec, all or none: a bad
    field, a child that fails validation or too many children is a 422 and nothing is stored."""
    state = request.app.state
    body = await read_body(request, limit=state.settings.max_spec_bytes)
    data = load_document(body, request.headers.get("content-type", "application/json"))
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(
            [{**e, "loc": ("body", *e["loc"]), "ctx": None} for e in error.errors(include_url=False)]
        ) from None
    return await run_in_threadpool(
        _store_and_enqueue, sweep, principal, state.settings, state.sessions, state.queue
    )


def _store_and_enqueue(
    sweep: SweepSpec,
    principal: Principal,
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: JobQueue,
) -> SweepOut:
    with sessions() as session:
        children = _child_specs(sweep, settings=settings, session=session, principal=principal)
        quotas.check(
            session=session, owner=principal.owner, specs=[spec for spec, _ in children], settings=settings
        )
        row, made = sweeps.create_sweep(
            session=session,
            sweep=sweep,
            children=children,
            max_attempts=settings.max_attempts,
            owner=principal.owner,
        )
        session.commit()  # every child or none; then enqueue, so a worker finds the job it is handed
        for job in made:
            if job.wait_reason is None or state_machine.settle_waiting_job(session=session, job=job):
                queue.enqueue(job.id, job.pool)
        return sweeps.sweep_out(session=session, row=row)


def _child_specs(
    sweep: SweepSpec, *, settings: Settings, session: Session, principal: Principal
) -> list[tuple[JobSpec, Job | None]]:
    """Each child's spec, checked exactly as POST /jobs checks one (paths confined, init.from_job usable),
    with its parent job. The first bad child is a 422 that names it."""
    try:
        grid = points(sweep)
    except SweepSpecError as error:
        raise _sweep_error(error.loc, str(error)) from None
    children = []
    for index, point in enumerate(grid):
        try:
            readable = may_read_job(session, principal)
            spec = confine_paths(check_spec(child_spec(sweep, point)), settings, may_read_job=readable)
            children.append((spec, parent_of(spec, session=session, principal=principal)))
        except SweepSpecError as error:
            raise _sweep_error(error.loc, str(error)) from None
        except InvalidInputError as error:
            raise _blame_child(error, sweep, point, f"job {index + 1} of {len(grid)}") from None
    return children


def _sweep_error(loc: tuple[str | int, ...], message: str) -> InvalidInputError:
    return invalid(loc, message, "sweep_invalid")


def _blame_child(error: InvalidInputError, sweep: SweepSpec, point: Point, which: str) -> Exception:
    """A child's 422, placed on the swept field when that is what failed, else on the base spec."""
    values = ", ".join(f"{path}={value!r}" for path, value in point.items())
    details = []
    for detail in error.details:
        loc = tuple(detail["loc"])[1:]  # without "body"
        swept = next((p for p in point if loc[: len(p.split("."))] == tuple(p.split("."))), None)
        where = (*sweep.space_loc, swept) if swept is not None else ("base", *loc)
        details.append({**detail, "loc": ("body", *where), "msg": f"{which} ({values}): {detail['msg']}"})
    return InvalidInputError(details)


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


@router.post("/{sweep_id}/cancel", status_code=202, responses={404: {"description": "Unknown sweep"}})
def cancel_sweep(sweep_id: SweepId, session: SessionDep, principal: PrincipalDep) -> SweepOut:
    """Cancel every child that has not finished: queued ones at once, running ones within seconds."""
    row = sweeps.cancel_sweep(session=session, sweep_id=sweep_id, principal=principal)
    return sweeps.sweep_out(session=session, row=row)
