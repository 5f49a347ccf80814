"""`vitq token create|list|revoke` (against the configured database: run them where the service's settings
are), `vitq login` (saves a token for this user's CLI), and whether `vitq serve` requires tokens."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from api.cli.exit_codes import EXIT_OK, EXIT_USAGE
from api.core.settings import Settings, get_settings

if TYPE_CHECKING:  # the CLI's other commands do not pay for importing SQLAlchemy
    from sqlalchemy.orm import Session

MAX_OWNER_LENGTH = 64  # jobs.owner, api_tokens.owner


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_settings(settings: Settings, *, host: str, insecure: bool) -> tuple[Settings, str]:
    """The settings `vitq serve` runs with, and the line it prints about authentication. VITQ_AUTH left unset
    means required, except on a loopback address (one person on a laptop); `--insecure` or VITQ_AUTH=off turn
    it off on any address, said loudly."""
    loopback = is_loopback(host)
    if host not in ("0.0.0.0", "::", "") and host.strip("[]").lower() not in settings.allowed_host_names:
        # The address it was told to serve on is a name it answers to (api/server/request_guard.py).
        settings = settings.model_copy(update={"allowed_hosts": f"{settings.allowed_hosts},{host}"})
    if not (insecure or settings.auth == "off" or (settings.auth is None and loopback)):
        required = settings.model_copy(update={"auth": "required"})
        return required, "vitq: authentication required (make tokens with `vitq token create --owner NAME`)"
    off = settings.model_copy(update={"auth": "off"})
    if loopback:
        return off, f"vitq: authentication is off: bound to {host}, only this machine can connect"
    why = "--insecure" if insecure else "VITQ_AUTH=off"
    return off, f"vitq: WARNING: authentication is off on {host} ({why}): anyone who connects acts as admin"


def database_session() -> Session:
    from sqlalchemy.orm import Session

    from api.core.db import make_engine
    from api.core.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    return Session(make_engine(url), expire_on_commit=False)


def cmd_token_create(args: argparse.Namespace) -> int:
    from api.core import tokens

    with database_session() as session:
        row, token = tokens.create(session=session, owner=args.owner, is_admin=args.admin)
    role = "admin" if row.is_admin else "user"
    print(f"token {row.id} for {row.owner} ({role}); it is shown once, only its hash is stored:")
    print(token)
    return EXIT_OK


def cmd_token_list(_args: argparse.Namespace) -> int:
    from api.core import tokens

    with database_session() as session:
        rows = tokens.all_tokens(session=session)
    print(f"{'ID':>4}  {'OWNER':<20} {'ROLE':<6} {'CREATED':<20} {'LAST USED':<20} REVOKED")
    for row in rows:
        print(
            f"{row.id:>4}  {row.owner:<20} {'admin' if row.is_admin else 'user':<6} {_when(row.created_at):<20} "
            f"{_when(row.last_used_at):<20} {_when(row.revoked_at)}"
        )
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from api.core import tokens

    with database_session() as session:
        if not tokens.revoke(session=session, token_id=args.id):
            print(f"vitq: no live token {args.id}", file=sys.stderr)
            return EXIT_USAGE
    print(f"token {args.id} revoked")
    return EXIT_OK


def cmd_login(args: argparse.Namespace) -> int:
    """Check the token against the server, then save it (0600) for every later command."""
    from api.client import VitqClient
    from api.client.credentials import save_token

    token = (args.token or getpass.getpass("vitq token: ")).strip()
    with VitqClient(args.url, token=token) as client:
        client.list(limit=1)  # a 401 raises VitqError: nothing is saved
    print(f"vitq: token saved to {save_token(token)}")
    return EXIT_OK


def owner_name(text: str) -> str:
    if not 1 <= len(text) <= MAX_OWNER_LENGTH or "\0" in text:
        raise argparse.ArgumentTypeError(f"an owner is 1 to {MAX_OWNER_LENGTH} characters")
    return text


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="make, list and revoke API tokens (against the database)")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token; printed once, as the last line")
    create.add_argument("--owner", required=True, type=owner_name, help="whose jobs the token sees and makes")
    create.add_argument("--admin", action="store_true", help="sees and acts on every owner's jobs")
    create.set_defaults(run=cmd_token_create)
    actions.add_parser("list", help="every token (never the token itself)").set_defaults(run=cmd_token_list)
    revoke = actions.add_parser("revoke", help="revoke a token: refused from the next request on")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=cmd_token_revoke)
    login = commands.add_parser("login", help="save a token for this user's vitq commands (0600 file)")
    login.add_argument("--token", help="default: asked for without echo")
    login.set_defaults(run=cmd_login)
