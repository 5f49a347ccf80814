"""Answers built without FastAPI's generic path."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize with pydantic-core directly; returned from a route, FastAPI skips re-validating the model and
    its generic encoder (both add up on a job's nested spec)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
