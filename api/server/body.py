"""Reading a request's body with a size limit, and a request document (JSON or YAML) as a model."""

from __future__ import annotations

from typing import TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from api.core.errors import InvalidInputError
from api.core.spec_input import load_document

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the spec is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the spec is larger than {limit} bytes")
    return bytes(body)


async def read_document(request: Request, model: type[Model]) -> Model:
    """The body (JSON or YAML by its content type, at most max_spec_bytes) validated as `model`: POST /sweeps'
    and POST /transfers' one reading. A bad field is a 422 whose loc starts with "body"."""
    body = await read_body(request, limit=request.app.state.settings.max_spec_bytes)
    data = load_document(body, request.headers.get("content-type", "application/json"))
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(
            [{**e, "loc": ("body", *e["loc"]), "ctx": None} for e in error.errors(include_url=False)]
        ) from None
