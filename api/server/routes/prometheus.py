"""GET /metrics: the Prometheus text exposition of the app's registry (api.server.prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.prometheus), media_type=CONTENT_TYPE_LATEST)
