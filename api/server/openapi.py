"""The OpenAPI document, so that a client generated from /openapi.json (any language's generator) can submit,
read and authenticate: the bodies read by hand (a spec, a sweep, a transfer) are declared as components, every operation is
named after its route function, and the bearer scheme is declared for every route that needs a token."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api.core.sweep_spec import SweepSpec
from api.core.transfer_spec import TransferSpec
from vit.config import JobSpec

BEARER = "bearer"
PUBLIC_PATHS = {"/healthz", "/metrics"}  # also served without a token (api/server/auth.py)


def operation_id(route: APIRoute) -> str:
    """`submit_job`, `cancel_job`, ...: the route function's name (unique across the app)."""
    return route.name


def document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (JobSpec, SweepSpec, TransferSpec):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
        components["securitySchemes"] = {
            BEARER: {"type": "http", "scheme": "bearer", "description": "An API token (`vitq token create`)."}
        }
        schema["security"] = [{BEARER: []}]
        for path in PUBLIC_PATHS & set(schema.get("paths", {})):
            for operation in schema["paths"][path].values():
                operation["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema
