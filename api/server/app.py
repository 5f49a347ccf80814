"""The FastAPI app: one router per resource, assembled here; shared state (engine, sessions, the queue client)
is built once per app, so a request never pays for setting them up."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker

from api.core.broker import JobQueue
from api.core.db import make_engine
from api.core.settings import Settings, get_settings
from api.server import errors, openapi, threads
from api.server.auth import store_bootstrap_token
from api.server.prometheus import JobCollector, LatencyMiddleware, request_latency
from api.server.request_guard import RequestGuard
from api.server.routes import (
    checkpoints,
    dashboard,
    events,
    health,
    jobs,
    logs,
    metrics,
    prometheus,
    sweeps,
    transfers,
    webhooks,
    workers,
)
from api.server.security_headers import SecurityHeaders
from api.server.unavailable import DATABASE_UNAVAILABLE, ResponseDeadline, database_unavailable
from api.server.watch import Feeds


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # A request waits at most a few seconds for a connection: past that it is a 503 the client may retry.
    engine = make_engine(settings.resolved_database_url, connect_timeout_s=3, pool_timeout_s=3.0)
    queue = JobQueue(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.bootstrap_admin_token is not None:
            store_bootstrap_token(sessions, settings.bootstrap_admin_token.get_secret_value())
        # What exists now (modules, the app, its schemas: ~150k objects) lives as long as the process: the
        # collector need not scan it again on every full collection (a pause of tens of ms under load).
        gc.freeze()
        yield
        queue.close()
        engine.dispose()

    # /docs and /redoc with Swagger UI and ReDoc from the fastapi-offline package (pinned in pyproject), not a CDN.
    app = FastAPIOffline(
        title="vitq",
        summary="A training service for Vision Transformers.",
        lifespan=lifespan,
        static_url="/docs-static",
        generate_unique_id_function=openapi.operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    # expire_on_commit=False: a committed job is returned as is, without a reload round trip.
    app.state.sessions = sessions = sessionmaker(engine, expire_on_commit=False)
    # For reads that change nothing: each statement commits itself, so a read sends no BEGIN and no ROLLBACK
    # (under READ COMMITTED each statement saw its own snapshot anyway).
    app.state.reads = sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
    app.state.queue = queue
    app.state.writers = threads.pool(settings.api_writers)
    app.state.readers = threads.pool(settings.api_readers)
    app.state.prometheus = CollectorRegistry()
    app.state.prometheus.register(JobCollector(app.state.sessions, settings.lease_seconds))
    app.add_middleware(LatencyMiddleware, histogram=request_latency(app.state.prometheus))

    errors.install(app)
    for error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error, database_unavailable)
    app.add_middleware(ResponseDeadline)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestGuard, settings=settings)  # outermost: a refused request costs nothing more
    app.state.feeds = Feeds(sessions, settings)
    for module in (
        jobs,
        events,
        sweeps,
        transfers,
        webhooks,
        workers,
        metrics,
        checkpoints,
        logs,
        health,
        prometheus,
        dashboard,
    ):
        app.include_router(module.router)
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]
    return app
