"""Sweeps: submit (a base spec and a grid or random space; every child made in one transaction), list, show
with the children's metrics, cancel every child."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import state_machine, sweeps
from api.deps import SessionDep
from api.models import MAX_JOB_ID, Job
from api.queue import JobQueue
from api.routes.jobs import _parent_of as parent_of
from api.schemas import SweepList, SweepOut
from api.settings import Settings
from api.spec_input import YAML_TYPES, check_spec, confine_paths, load_document, read_body
from api.sweep_spec import Point, SweepSpec, SweepSpecError, child_spec, points
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
async def submit_sweep(request: Request) -> SweepOut:
    """Make one queued job per point of the grid (or per random draw) from the base spec, all or none: a bad
    field, a child that fails validation or too many children is a 422 and nothing is stored."""
    state = request.app.state
    body = await read_body(request, limit=state.settings.max_spec_bytes)
    data = load_document(body, request.headers.get("content-type", "application/json"))
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"]), "ctx": None} for e in error.errors(include_url=False)]
        ) from None
    return await run_in_threadpool(_store_and_enqueue, sweep, state.settings, state.sessions, state.queue)


def _store_and_enqueue(
    sweep: SweepSpec, settings: Settings, sessions: sessionmaker[Session], queue: JobQueue
) -> SweepOut:
    with sessions() as session:
        children = _child_specs(sweep, settings=settings, session=session)
        row, made = sweeps.create_sweep(
            session=session, sweep=sweep, children=children, max_attempts=settings.max_attempts
        )
        session.commit()  # every child or none; then enqueue, so a worker finds the job it is handed
        for job in made:
            if job.wait_reason is None or state_machine.settle_waiting_job(session=session, job=job):
                queue.enqueue(job.id)
        return sweeps.sweep_out(session=session, row=row)


def _child_specs(
    sweep: SweepSpec, *, settings: Settings, session: Session
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
            spec = confine_paths(check_spec(child_spec(sweep, point)), settings)
            children.append((spec, parent_of(spec, session=session)))
        except SweepSpecError as error:
            raise _sweep_error(error.loc, str(error)) from None
        except RequestValidationError as error:
            raise _blame_child(error, sweep, point, f"job {index + 1} of {len(grid)}") from None
    return children


def _sweep_error(loc: tuple[str | int, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": "sweep_invalid"}])


def _blame_child(error: RequestValidationError, sweep: SweepSpec, point: Point, which: str) -> Exception:
    """A child's 422, placed on the swept field when that is what failed, else on the base spec."""
    values = ", ".join(f"{path}={value!r}" for path, value in point.items())
    details = []
    for detail in error.errors():
        loc = tuple(detail["loc"])[1:]  # without "body"
        swept = next((p for p in point if loc[: len(p.split("."))] == tuple(p.split("."))), None)
        where = (*sweep.space_loc, swept) if swept is not None else ("base", *loc)
        details.append({**detail, "loc": ("body", *where), "msg": f"{which} ({values}): {detail['msg']}"})
    return RequestValidationError(details)


@router.get("")
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SweepList:
    """Sweeps, newest first, each with its children counted by status and its best val_top1."""
    rows, total = sweeps.list_sweeps(session=session, limit=limit, offset=offset)
    return SweepList(items=sweeps.summaries(session=session, sweeps=rows), total=total)


@router.get("/{sweep_id}", responses={404: {"description": "Unknown sweep"}})
def get_sweep(sweep_id: SweepId, session: SessionDep) -> SweepOut:
    """The sweep and its children: each one's swept values, status and metrics (best val_top1, latest few-shot)."""
    return sweeps.sweep_out(session=session, row=sweeps.get_sweep(session=session, sweep_id=sweep_id))


@router.post("/{sweep_id}/cancel", status_code=202, responses={404: {"description": "Unknown sweep"}})
def cancel_sweep(sweep_id: SweepId, session: SessionDep) -> SweepOut:
    """Cancel every child that has not finished: queued ones at once, running ones within seconds."""
    row = sweeps.cancel_sweep(session=session, sweep_id=sweep_id)
    return sweeps.sweep_out(session=session, row=row)
