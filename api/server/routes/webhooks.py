"""Webhooks: an owner registers where to hear that a job, a sweep or any of their jobs ended; lists, removes,
and reads each webhook's deliveries (api/core/webhooks.py, api/core/notify.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.core import webhooks
from api.core.models import MAX_JOB_ID
from api.core.schemas import DeliveryOut, WebhookIn, WebhookOut
from api.server.auth import PrincipalDep
from api.server.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
WebhookId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="A webhook's id.")]


@router.post("", status_code=201)
def register(
    hook: WebhookIn, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> WebhookOut:
    """Slack-compatible JSON (`{"text": ...}` and the facts) is posted to `url` when the job (`job_id`), the sweep
    (`sweep_id`) or, with neither, any of your jobs ends. Only public addresses, unless the server allows more."""
    row = webhooks.register(session=session, principal=principal, hook=hook, settings=settings)
    return WebhookOut.model_validate(row, from_attributes=True)


@router.get("")
def list_webhooks(session: SessionDep, principal: PrincipalDep) -> list[WebhookOut]:
    return [
        WebhookOut.model_validate(r, from_attributes=True)
        for r in webhooks.list_mine(session=session, principal=principal)
    ]


@router.delete("/{webhook_id}", status_code=204, responses={404: {"description": "Unknown webhook"}})
def remove(webhook_id: WebhookId, session: SessionDep, principal: PrincipalDep) -> Response:
    webhooks.remove(session=session, principal=principal, webhook_id=webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", responses={404: {"description": "Unknown webhook"}})
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    """Newest first: each message, its attempts and its last outcome (the receiver's status or the error)."""
    rows = webhooks.deliveries(session=session, principal=principal, webhook_id=webhook_id, limit=limit)
    return [DeliveryOut.model_validate(r, from_attributes=True) for r in rows]
