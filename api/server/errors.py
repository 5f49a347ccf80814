"""The one place where the core's domain errors (api/core/errors.py) become HTTP answers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.core.errors import DomainError, InvalidInputError, JobStateError, NotFoundError, QuotaExceededError

STATUS: dict[type[DomainError], int] = {
    NotFoundError: 404,
    JobStateError: 409,
    QuotaExceededError: 429,
}


async def _domain_error(_request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, InvalidInputError):
        return JSONResponse({"detail": error.details}, status_code=422)
    status = next(code for kind, code in STATUS.items() if isinstance(error, kind))
    return JSONResponse({"detail": str(error)}, status_code=status)


def install(app: FastAPI) -> None:
    for kind in (*STATUS, InvalidInputError):
        app.add_exception_handler(kind, _domain_error)
