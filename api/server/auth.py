"""Who is asking: the `Authorization: Bearer <token>` of a request, as a Principal (api/core/state_machine.py).

With VITQ_AUTH=off every request acts as the local admin. Otherwise a missing, unknown or revoked token is a 401
that names the Bearer scheme; the token itself never appears in an answer or a log line. /healthz, /metrics
and the dashboard's static files take no principal (README, "Tenants").
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.core import tokens
from api.core.settings import Settings
from api.core.state_machine import LOCAL_ADMIN, Principal
from api.server.deps import SessionDep

CHALLENGE = {"WWW-Authenticate": "Bearer"}
BOOTSTRAP_OWNER = "admin"
MIN_BOOTSTRAP_CHARS = 32  # e.g. `openssl rand -hex 32`: as much entropy as a made token
log = logging.getLogger(__name__)


def unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers=CHALLENGE)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 without one."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("authentication required: send Authorization: Bearer <token> (vitq token create)")
    return token.strip()


def principal_of(*, session: Session, settings: Settings, authorization: str | None) -> Principal:
    """The request's principal (blocking: one indexed read). 401 for a missing, unknown or revoked token."""
    if not settings.auth_required:
        return LOCAL_ADMIN
    principal = tokens.authenticate(session=session, token=bearer_token(authorization))
    if principal is None:
        raise unauthorized("invalid or revoked token")
    return principal


async def get_principal(request: Request, session: SessionDep) -> Principal:
    settings: Settings = request.app.state.settings
    if not settings.auth_required:
        return LOCAL_ADMIN  # no thread hop when there is nothing to look up
    authorization = request.headers.get("authorization")
    bearer_token(authorization)  # a missing header is refused before any thread hop
    return await run_in_threadpool(
        principal_of, session=session, settings=settings, authorization=authorization
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def store_bootstrap_token(sessions: sessionmaker[Session], token: str) -> None:
    """VITQ_BOOTSTRAP_ADMIN_TOKEN (docker compose's first admin): stored hashed, once, at API start."""
    if len(token) < MIN_BOOTSTRAP_CHARS:
        raise ValueError(f"VITQ_BOOTSTRAP_ADMIN_TOKEN is shorter than {MIN_BOOTSTRAP_CHARS} characters")
    with sessions() as session:
        if tokens.ensure(session=session, owner=BOOTSTRAP_OWNER, token=token, is_admin=True):
            log.info("stored the bootstrap admin token (owner %s)", BOOTSTRAP_OWNER)
