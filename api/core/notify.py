"""Webhooks: tell an owner that a job or a sweep ended, as Slack-compatible JSON (`{"text": ...}` plus the facts).

The outbox is the final state itself: a job's row carries `notified = false` from its INSERT, so the commit that
ends it (any transition of api/core/state_machine.py) is also the commit that makes its notification due, and no
transition waits for a webhook or can lose one. `make_deliveries` turns ended, unnotified jobs and sweeps into
delivery rows, flipping `notified` in the same transaction; `deliver_due` sends them: each claimed for a while
by a conditional UPDATE (two dispatchers never send one twice at once), retried with backoff (1, 2, 4 ... s, at
most 5 minutes apart, MAX_ATTEMPTS in all), and its outcome stored on the row and logged. Both run in a
background thread of every worker (worker/notifier.py).

Addresses: http(s) only, and only to public addresses unless the settings allow more (VITQ_WEBHOOK_ALLOW,
networks like 127.0.0.1/32,10.0.0.0/8): a webhook must not make the service reach its own loopback, link-local
(cloud metadata) or private networks. The name is resolved and checked when the webhook is registered and again
before every attempt, and redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from api.core.models import Job, JobStatus, Sweep, Webhook, WebhookDelivery
from api.core.state_machine import FINISHED, now

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 300.0
CLAIM_S = 30.0  # a claimed delivery's sender has this long before another may try it
TIMEOUT_S = 5.0
BATCH = 100
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(ValueError):
    """The URL may not be called (scheme, unresolvable name, or an address outside what is allowed)."""


def allowed_networks(setting: str | None) -> list[Network]:
    return [
        ipaddress.ip_network(part.strip(), strict=False)
        for part in (setting or "").split(",")
        if part.strip()
    ]


def check_url(url: str, allow: Sequence[Network]) -> None:
    """Raise AddressRefused unless `url` is http(s) and every address its host resolves to is public or in
    `allow`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused(f"{url!r} is not an http(s) URL with a host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise AddressRefused(f"{parts.hostname} does not resolve ({error})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if any(address in network for network in allow):
            continue
        if not address.is_global:
            kind = next(
                (
                    k
                    for k in ("loopback", "link_local", "private", "multicast")
                    if getattr(address, f"is_{k}")
                ),
                "reserved",
            ).replace("_", "-")
            raise AddressRefused(
                f"{parts.hostname} is {address}, a {kind} address; the server's VITQ_WEBHOOK_ALLOW does not allow it"
            )


# ------------------------------------------------------------------------------------------------ the outbox
def make_deliveries(*, session: Session) -> int:
    """A delivery for every webhook that wants to hear of a job or sweep that ended and was not yet handed on.
    Committed; how many deliveries were made."""
    made = 0
    ended = session.scalars(
        select(Job).where(Job.notified.is_(False), Job.status.in_(FINISHED)).order_by(Job.id).limit(BATCH)
    ).all()
    for job in ended:
        if _mark(session, Job, job.id):
            hooks = session.scalars(
                select(Webhook).where(
                    or_(
                        Webhook.job_id == job.id,
                        and_(
                            Webhook.owner == job.owner, Webhook.job_id.is_(None), Webhook.sweep_id.is_(None)
                        ),
                    )
                )
            ).all()
            made += _add(session, hooks, "job.ended", job_payload(job))
    for sweep in _ended_sweeps(session):
        if _mark(session, Sweep, sweep.id):
            hooks = session.scalars(select(Webhook).where(Webhook.sweep_id == sweep.id)).all()
            made += _add(session, hooks, "sweep.ended", sweep_payload(session, sweep))
    session.commit()
    return made


def _mark(session: Session, table: type[Job] | type[Sweep], row_id: int) -> bool:
    result = session.execute(
        update(table).where(table.id == row_id, table.notified.is_(False)).values(notified=True)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def _add(session: Session, hooks: Sequence[Webhook], event: str, payload: dict[str, Any]) -> int:
    session.add_all(
        WebhookDelivery(webhook_id=h.id, event=event, payload=payload, next_at=now()) for h in hooks
    )
    return len(hooks)


def _ended_sweeps(session: Session) -> list[Sweep]:
    """Sweeps not yet handed on whose work is over: a search that asks no more, or a sweep whose every child
    ended (with at least one child)."""
    unfinished = (
        select(func.count())
        .select_from(Job)
        .where(Job.sweep_id == Sweep.id, Job.status.not_in(FINISHED))
        .scalar_subquery()
    )
    children = select(func.count()).select_from(Job).where(Job.sweep_id == Sweep.id).scalar_subquery()
    over = or_(
        and_(Sweep.method.is_not(None), Sweep.ended_at.is_not(None)),
        and_(Sweep.method.is_(None), children > 0, unfinished == 0),
    )
    return list(session.scalars(select(Sweep).where(Sweep.notified.is_(False), over).limit(BATCH)).all())


def job_payload(job: Job) -> dict[str, Any]:
    status = JobStatus(job.status)
    why = f": {job.error.splitlines()[0]}" if job.error else ""
    text = f"vitq: job {job.id} ({job.name}) {status.value} at step {job.step} of {job.total_steps}{why}"
    return {
        "text": text,
        "event": "job.ended",
        "job": {"id": job.id, "name": job.name, "status": status.value, "step": job.step, "error": job.error},
    }


def sweep_payload(session: Session, sweep: Sweep) -> dict[str, Any]:
    counts = dict(
        session.execute(
            select(Job.status, func.count()).where(Job.sweep_id == sweep.id).group_by(Job.status)
        ).all()
    )
    states = ", ".join(f"{n} {JobStatus(s).value}" for s, n in sorted(counts.items()))
    return {
        "text": f"vitq: sweep {sweep.id} ({sweep.name}) ended: {states}",
        "event": "sweep.ended",
        "sweep": {
            "id": sweep.id,
            "name": sweep.name,
            "jobs": {JobStatus(s).value: n for s, n in counts.items()},
        },
    }


# ------------------------------------------------------------------------------------------------ sending
def deliver_due(*, session: Session, allow: Sequence[Network], client: httpx.Client) -> int:
    """Send every due delivery once (each claimed first); how many were sent successfully."""
    moment = now()
    due = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_at <= moment,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < moment),
        )
        .order_by(WebhookDelivery.next_at)
        .limit(BATCH)
    ).all()
    session.rollback()
    sent = 0
    for delivery_id in due:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.state == "pending",
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < moment),
            )
            .values(claimed_until=now() + timedelta(seconds=CLAIM_S))
        )
        session.commit()
        if getattr(claimed, "rowcount", 0) != 1:
            continue  # another dispatcher has it
        sent += _attempt(session, delivery_id, allow, client)
    return sent


def _attempt(session: Session, delivery_id: int, allow: Sequence[Network], client: httpx.Client) -> bool:
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    hook = session.get(Webhook, delivery.webhook_id)
    assert hook is not None
    url, payload = hook.url, delivery.payload
    session.rollback()  # no transaction stays open while the receiver takes its time
    code: int | None = None
    error: str | None = None
    try:
        check_url(url, allow)
        response = client.post(url, json=payload, timeout=TIMEOUT_S, follow_redirects=False)
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {response.text[:200]}"
    except AddressRefused as refused:
        error = f"refused: {refused}"
    except httpx.HTTPError as failed:
        error = f"{type(failed).__name__}: {failed}"
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    delivery.attempts += 1
    delivery.last_code, delivery.last_error, delivery.claimed_until = code, error, None
    refused_for_good = error is not None and error.startswith("refused")
    if error is None:
        delivery.state, delivery.delivered_at = "delivered", now()
    elif refused_for_good or delivery.attempts >= MAX_ATTEMPTS:
        delivery.state = "failed"
    else:
        delivery.next_at = now() + timedelta(seconds=backoff(delivery.attempts))
    session.commit()
    level = logging.INFO if error is None else logging.WARNING
    log.log(
        level,
        "webhook %s: %s delivery %s attempt %s: %s",
        hook.id,
        delivery.event,
        delivery_id,
        delivery.attempts,
        error or f"delivered (HTTP {code})",
    )
    return error is None


def backoff(attempts: int) -> float:
    return min(BACKOFF_FIRST_S * 2 ** (attempts - 1), BACKOFF_MAX_S)
