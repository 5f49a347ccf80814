"""What the core refuses, as domain errors. The core never speaks HTTP: api/server/errors.py is the one place that
turns each of these into a status code and a body."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the core refuses: the caller's mistake or the job's state, never a bug."""


class NotFoundError(DomainError, LookupError):
    """Absent, or invisible to the caller (another owner's job is "not found", never "forbidden")."""


class JobNotFoundError(NotFoundError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")


class SweepNotFoundError(NotFoundError):
    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"sweep {sweep_id} not found")


class TransferNotFoundError(NotFoundError):
    def __init__(self, transfer_id: int) -> None:
        super().__init__(f"transfer {transfer_id} not found")


class JobStateError(DomainError):
    """The job's state forbids the action."""


class QuotaExceededError(DomainError):
    """A hard per-owner quota would be exceeded; nothing was stored."""


class InvalidInputError(DomainError):
    """Input that cannot be accepted, one detail per bad field in pydantic's shape (`loc`, `msg`, `type`), so
    that a client shows every problem at once and marks the field."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details))
        self.details = details


def invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> InvalidInputError:
    """One bad field of a request body (`loc` without the leading "body")."""
    return InvalidInputError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


class WebhookNotFoundError(NotFoundError):
    def __init__(self, webhook_id: int) -> None:
        super().__init__(f"webhook {webhook_id} not found")
