"""`vitq limits show|set|unset`: each owner's own job-size limits (api/core/limits.py), against the configured
database as `vitq token` is (run them where the service's settings are)."""

from __future__ import annotations

import argparse
import re

from api.cli.exit_codes import EXIT_OK
from api.cli.tokens import database_session, owner_name
from api.core.settings import get_settings

# Counts are easier to read and type with a suffix: 100M parameters, 50M bytes of log.
SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}
VALUE = re.compile(r"^([0-9][0-9_]*)(k|M|G)?$")
NO_LIMIT = "none"


def limit_value(text: str) -> int | None:
    """A limit's value: a positive count, optionally with k, M or G (thousands, millions, billions), or "none"."""
    from api.core.models import MAX_ID  # owner_limits.value is a BIGINT

    if text == NO_LIMIT:
        return None
    match = VALUE.match(text)
    value = int(match.group(1)) * SUFFIXES[match.group(2) or ""] if match else 0
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a limit is a positive count (100M, 384, 50k) up to {MAX_ID:,}, or {NO_LIMIT}"
        )
    return value


def assignment(text: str) -> tuple[str, int | None]:
    from api.core.limits import LIMITS

    name, _, value = text.partition("=")
    if name not in LIMITS or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, NAME one of {', '.join(LIMITS)}")
    return name, limit_value(value)


def limit_name(text: str) -> str:
    from api.core.limits import LIMITS

    if text not in LIMITS:
        raise argparse.ArgumentTypeError(f"{text!r}: the limits are {', '.join(LIMITS)}")
    return text


def _shown(value: int | None) -> str:
    return f"{value:,}" if value is not None else NO_LIMIT


def cmd_limits_show(_args: argparse.Namespace) -> int:
    from api.core import limits

    settings = get_settings()
    with database_session() as session:
        own = limits.all_own(session=session)
    print(f"{'LIMIT':<22} {'DEFAULT':>16}  BOUNDS")
    for name, what in limits.LIMITS.items():
        print(f"{name:<22} {_shown(getattr(settings, name)):>16}  {what}")
    for owner, values in own.items():
        print(f"\n{owner}:")
        for name, value in values.items():
            print(f"  {name:<20} {_shown(value):>16}")
    return EXIT_OK


def cmd_limits_set(args: argparse.Namespace) -> int:
    from api.core import limits

    values = dict(args.values)
    with database_session() as session:
        limits.set_own(session=session, owner=args.owner, values=values)
    print(f"{args.owner}: " + ", ".join(f"{name} {_shown(value)}" for name, value in values.items()))
    return EXIT_OK


def cmd_limits_unset(args: argparse.Namespace) -> int:
    from api.core import limits

    with database_session() as session:
        dropped = limits.unset_own(session=session, owner=args.owner, names=args.names)
    print(f"{args.owner}: {dropped} of their own limits dropped; the service's defaults hold")
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("limits", help="job-size limits: the defaults and each owner's own (admin)")
    actions = parser.add_subparsers(dest="limits_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the defaults (VITQ_MAX_*) and every owner's own limits")
    show.set_defaults(run=cmd_limits_show)
    set_ = actions.add_parser(
        "set", help="set an owner's own limits, e.g. max_job_params=100M max_log_bytes=none"
    )
    set_.add_argument("owner", type=owner_name)
    set_.add_argument("values", nargs="+", type=assignment, metavar="NAME=VALUE")
    set_.set_defaults(run=cmd_limits_set)
    unset = actions.add_parser("unset", help="drop an owner's own limits: the defaults hold again")
    unset.add_argument("owner", type=owner_name)
    unset.add_argument("names", nargs="+", type=limit_name, metavar="NAME")
    unset.set_defaults(run=cmd_limits_unset)
