"""API tokens: made from 32 random bytes, shown once, stored only as their SHA-256.

A token is looked up by its hash (a unique index), so the database never holds anything that would let a reader
of it, or of a backup, authenticate. A plain hash suffices (no salt, no slow KDF): the token has 256 bits of
entropy, nothing to guess. Revocation is a column the lookup checks on every request, so it takes effect on the
next one; nothing caches a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from api.core.models import ApiToken, OwnerLimit
from api.core.state_machine import Principal

PREFIX = "vitq_"  # recognisable in a leaked file or a secret scanner
TOKEN_BYTES = 32
# last_used_at is written at most this often per token: a write per request would cost more than the lookup.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    *, session: Session, owner: str, is_admin: bool = False, token: str | None = None
) -> tuple[ApiToken, str]:
    """Store a token for `owner` (committed); returns the row and the token itself, which is not kept."""
    token = token or new_token()
    row = ApiToken(owner=owner, is_admin=is_admin, token_hash=hash_token(token), created_at=datetime.now(UTC))
    session.add(row)
    session.commit()
    return row, token


def ensure(*, session: Session, owner: str, token: str, is_admin: bool) -> bool:
    """Store `token` unless its hash is already there (a bootstrap token from the environment). True if added."""
    if session.scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))) is not None:
        return False
    create(session=session, owner=owner, is_admin=is_admin, token=token)
    return True


def all_tokens(*, session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def revoke(*, session: Session, token_id: int) -> bool:
    """Revoke a token (committed). False when there is no such token or it was revoked already."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    session.commit()
    return bool(getattr(result, "rowcount", 0))


# Built once: every authenticated request runs it. The owner's limits come along (one row per limit an admin
# set, or one row of NULLs), so a submit reads nothing more about its owner.
_LIVE_TOKEN = (
    select(
        ApiToken.id,
        ApiToken.owner,
        ApiToken.is_admin,
        ApiToken.token_hash,
        ApiToken.last_used_at,
        OwnerLimit.name.label("limit_name"),
        OwnerLimit.value.label("limit_value"),
    )
    .outerjoin(OwnerLimit, OwnerLimit.owner == ApiToken.owner)
    .where(ApiToken.token_hash == bindparam("digest"), ApiToken.revoked_at.is_(None))
)


def authenticate(*, session: Session, token: str) -> Principal | None:
    """The principal a live token stands for; None for an unknown or revoked one."""
    digest = hash_token(token)
    # On the session's connection, past the ORM: a plain row is all it needs, and ORM execution cost more CPU
    # than the lookup itself.
    rows = session.connection().execute(_LIVE_TOKEN, {"digest": digest}).all()
    # The index compared hashes; compare again in constant time so no timing ever depends on a secret's bytes.
    if not rows or not hmac.compare_digest(rows[0].token_hash, digest):
        return None
    row = rows[0]
    own_limits = tuple((r.limit_name, r.limit_value) for r in rows if r.limit_name is not None)
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is None or (last if last.tzinfo else last.replace(tzinfo=UTC)) < now - LAST_USED_RESOLUTION:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        session.commit()
    return Principal(owner=row.owner, is_admin=row.is_admin, own_limits=own_limits)
