"""An owner's webhooks: register (the address checked as deliveries will be, the job or sweep one the owner may
see), list, remove, and each one's deliveries with their outcomes. Sending is api/core/notify.py's."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import reads, state_machine, sweeps
from api.core.errors import SweepNotFoundError, WebhookNotFoundError, invalid
from api.core.models import Webhook, WebhookDelivery
from api.core.notify import AddressRefused, allowed_networks, check_url
from api.core.schemas import WebhookIn
from api.core.settings import Settings
from api.core.state_machine import Principal


def register(*, session: Session, principal: Principal, hook: WebhookIn, settings: Settings) -> Webhook:
    """Committed. A 422 names the field: an address the server may not call, a job or sweep that does not exist
    for this owner, or both a job and a sweep."""
    try:
        check_url(hook.url, allowed_networks(settings.webhook_allow))
    except AddressRefused as refused:
        raise invalid(("url",), str(refused), "webhook_url_refused") from None
    if hook.job_id is not None and hook.sweep_id is not None:
        raise invalid(("sweep_id",), "a webhook is for one job, one sweep, or (neither) all your jobs")
    if (
        hook.job_id is not None
        and reads.find_job(session=session, job_id=hook.job_id, principal=principal) is None
    ):
        raise invalid(("job_id",), f"job {hook.job_id} does not exist", "job_not_found")
    if hook.sweep_id is not None:
        try:
            sweeps.get_sweep(session=session, sweep_id=hook.sweep_id, principal=principal)
        except SweepNotFoundError:
            raise invalid(("sweep_id",), f"sweep {hook.sweep_id} does not exist", "sweep_not_found") from None
    row = Webhook(owner=principal.owner, url=hook.url, job_id=hook.job_id, sweep_id=hook.sweep_id)
    session.add(row)
    session.commit()
    return row


def get(*, session: Session, principal: Principal, webhook_id: int) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None or not state_machine.may_see(principal, row.owner):
        raise WebhookNotFoundError(webhook_id)
    return row


def list_mine(*, session: Session, principal: Principal) -> list[Webhook]:
    mine = state_machine.visible_rows(principal, Webhook.owner)
    return list(session.scalars(select(Webhook).where(*mine).order_by(Webhook.id)).all())


def remove(*, session: Session, principal: Principal, webhook_id: int) -> None:
    session.delete(get(session=session, principal=principal, webhook_id=webhook_id))
    session.commit()


def deliveries(
    *, session: Session, principal: Principal, webhook_id: int, limit: int
) -> list[WebhookDelivery]:
    get(session=session, principal=principal, webhook_id=webhook_id)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        ).all()
    )
