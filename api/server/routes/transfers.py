"""Transfers: submit (a pretrained checkpoint and a list of datasets; every child made in one transaction), list,
show with the table, the table as CSV, cancel every child."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session, sessionmaker

from api.core import submit, transfers
from api.core.broker import JobQueue
from api.core.models import MAX_ID, MAX_JOB_ID
from api.core.schemas import TransferList, TransferOut
from api.core.settings import Settings
from api.core.spec_input import YAML_TYPES
from api.core.state_machine import Principal
from api.core.transfer_spec import TransferSpec
from api.server.auth import PrincipalDep
from api.server.body import read_document
from api.server.deps import SessionDep
from api.server.threads import run_write

router = APIRouter(prefix="/transfers", tags=["transfers"])

TransferId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="A transfer's id.")]

_TRANSFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/TransferSpec"}
            },  # api/server/openapi.py
            **{t: {"schema": {"type": "string", "description": "The same as YAML."}} for t in YAML_TYPES},
        },
    }
}


@router.post("", status_code=201, response_model=TransferOut, openapi_extra=_TRANSFER_BODY)
async def submit_transfer(request: Request, principal: PrincipalDep) -> TransferOut:
    """Make a few-shot probe (a fine-tune of train.steps 0) and, when asked, a fine-tune per dataset from the
    source weights, all or none: a bad field or a child that fails validation is a 422 naming it, and nothing is
    stored."""
    state = request.app.state
    transfer = await read_document(request, TransferSpec)
    return await run_write(
        request, _store_and_enqueue, transfer, principal, state.settings, state.sessions, state.queue
    )


def _store_and_enqueue(
    transfer: TransferSpec,
    principal: Principal,
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: JobQueue,
) -> TransferOut:
    with sessions() as session:
        row = submit.submit_transfer(
            session=session, queue=queue, settings=settings, principal=principal, transfer=transfer
        )
        return transfers.transfer_out(session=session, row=row)


@router.get("")
def list_transfers(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> TransferList:
    """Transfers, newest first, each with its children counted by status and its table."""
    rows, total = transfers.list_transfers(session=session, principal=principal, limit=limit, offset=offset)
    return TransferList(items=transfers.summaries(session=session, transfers=rows), total=total)


@router.get("/{transfer_id}", responses={404: {"description": "Unknown transfer"}})
def get_transfer(transfer_id: TransferId, session: SessionDep, principal: PrincipalDep) -> TransferOut:
    """The transfer, its table (a row per dataset, a column per metric, the mean) and its children."""
    row = transfers.get_transfer(session=session, transfer_id=transfer_id, principal=principal)
    return transfers.transfer_out(session=session, row=row)


@router.get(
    "/{transfer_id}/table.csv",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}, 404: {"description": "Unknown transfer"}},
)
def get_transfer_csv(
    transfer_id: TransferId, session: SessionDep, principal: PrincipalDep
) -> PlainTextResponse:
    """The table as CSV: dataset, then a column per metric (accuracies in 0..1), and a last `mean` line."""
    row = transfers.get_transfer(session=session, transfer_id=transfer_id, principal=principal)
    [summary] = transfers.summaries(session=session, transfers=[row])
    return PlainTextResponse(
        transfers.table_csv(summary.table),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="transfer{transfer_id}.csv"'},
    )


@router.post("/{transfer_id}/cancel", status_code=202, responses={404: {"description": "Unknown transfer"}})
def cancel_transfer(transfer_id: TransferId, session: SessionDep, principal: PrincipalDep) -> TransferOut:
    """Cancel every child that has not finished: queued ones at once, running ones within seconds."""
    row = transfers.cancel_transfer(session=session, transfer_id=transfer_id, principal=principal)
    return transfers.transfer_out(session=session, row=row)
