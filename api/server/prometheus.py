"""Prometheus metrics for GET /metrics, built with prometheus-client.

Job and queue figures are read from the database (the record of truth) at scrape time by a custom collector,
so every API replica reports the same numbers and nothing is lost across restarts. Request latency is measured
in this process by an ASGI middleware, labelled by route template (`/jobs/{job_id}`), never by raw path, so the
label set stays bounded. Each app gets its own registry: several apps in one process (the tests) do not clash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core import workers
from api.core.models import Job, JobStatus, MetricPoint

POOL = "default"  # always reported, so its series exist before the first job
THROUGHPUT_METRIC = "images_per_s"  # what the trainer logs (vit.trainer)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobCollector(Collector):
    """Jobs by status; per pool the queue depth, the oldest queued job's age, live and busy workers and their
    GPUs busy or free; running jobs' heartbeat age and images/s; the metric points ingested so far. A few short
    reads per scrape."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float) -> None:
        self._sessions = sessions
        self._lease_seconds = lease_seconds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = datetime.now(UTC)
        with self._sessions() as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            queued = session.execute(
                select(Job.pool, func.count(), func.min(Job.created_at))
                .where(Job.status == JobStatus.queued)
                .group_by(Job.pool)
            ).all()
            running = session.execute(
                select(Job.id, Job.heartbeat_at, Job.worker, Job.spec).where(Job.status == JobStatus.running)
            ).all()
            throughput = _latest_values(session, [row.id for row in running], THROUGHPUT_METRIC)
            # Point ids only grow (a sequence): the highest is the count ingested, without counting a big table.
            ingested = session.scalar(select(func.max(MetricPoint.id))) or 0
            # The registry's rule: a heartbeat younger than the lease, not retired.
            live = [
                LiveWorker(worker.name, worker.pool, len(worker.devices or []))
                for worker in workers.live(session=session, lease_seconds=self._lease_seconds)
            ]

        jobs = GaugeMetricFamily("vitq_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status, 0))
        yield jobs

        depth = GaugeMetricFamily("vitq_queue_depth", "Queued jobs, per pool.", labels=["pool"])
        by_pool: dict[str, tuple[int, datetime | None]] = {
            pool: (n, oldest_at) for pool, n, oldest_at in queued
        }
        by_pool.setdefault(POOL, (0, None))
        for pool, (count, _) in sorted(by_pool.items()):
            depth.add_metric([pool], count)
        yield depth

        oldest = GaugeMetricFamily(
            "vitq_queue_oldest_job_age_seconds",
            "Age of the oldest queued job (0: none queued).",
            labels=["pool"],
        )
        for pool, (_, oldest_at) in sorted(by_pool.items()):
            oldest.add_metric([pool], _age(now, oldest_at))
        yield oldest

        pools = sorted(set(by_pool) | {worker.pool for worker in live})
        figures = {pool: _pool_figures([w for w in live if w.pool == pool], running) for pool in pools}
        alive = GaugeMetricFamily(
            "vitq_workers_live", "Workers whose heartbeat is younger than the lease.", labels=["pool"]
        )
        busy = GaugeMetricFamily("vitq_workers_busy", "Live workers running a job.", labels=["pool"])
        gpus = GaugeMetricFamily(
            "vitq_gpus",
            "GPUs of live workers: busy (held by running GPU jobs) or free.",
            labels=["pool", "state"],
        )
        for pool, figure in figures.items():
            alive.add_metric([pool], figure.live)
            busy.add_metric([pool], figure.busy)
            gpus.add_metric([pool, "busy"], figure.gpus_busy)
            gpus.add_metric([pool, "free"], figure.gpus - figure.gpus_busy)
        yield alive
        yield busy
        yield gpus

        heartbeat = GaugeMetricFamily(
            "vitq_job_heartbeat_age_seconds",
            "Seconds since each running job's last heartbeat.",
            labels=["job_id"],
        )
        for row in running:
            heartbeat.add_metric([str(row.id)], _age(now, row.heartbeat_at))
        yield heartbeat

        speed = GaugeMetricFamily(
            "vitq_job_images_per_second", "Each running job's latest logged images/s.", labels=["job_id"]
        )
        for job_id, value in throughput.items():
            speed.add_metric([str(job_id)], value)
        yield speed

        yield CounterMetricFamily(
            "vitq_metric_points_ingested", "Training metric points stored (all jobs).", value=ingested
        )


class LiveWorker(NamedTuple):
    name: str
    pool: str
    gpus: int


class PoolFigures(NamedTuple):
    live: int
    busy: int
    gpus: int
    gpus_busy: int


def _pool_figures(live: list[LiveWorker], running: Sequence[Row[Any]]) -> PoolFigures:
    """A worker's GPUs are busy as far as its running jobs ask for them: procs_per_node each, unless on the CPU."""
    asked: dict[str, int] = {}
    for row in running:
        resources = (row.spec or {}).get("resources", {})
        if row.worker is not None and resources.get("device") != "cpu":
            asked[row.worker] = asked.get(row.worker, 0) + int(resources.get("procs_per_node", 1))
    return PoolFigures(
        live=len(live),
        busy=sum(1 for worker in live if any(row.worker == worker.name for row in running)),
        gpus=sum(worker.gpus for worker in live),
        gpus_busy=sum(min(worker.gpus, asked.get(worker.name, 0)) for worker in live),
    )


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
        then = then.replace(tzinfo=UTC)
    return max((now - then).total_seconds(), 0.0)


def _latest_values(session: Session, job_ids: list[int], name: str) -> dict[int, float]:
    """The newest point of one series for each job (by step), in one query on the (job_id, name, step) index."""
    if not job_ids:
        return {}
    latest = (
        select(MetricPoint.job_id, func.max(MetricPoint.step).label("step"))
        .where(MetricPoint.job_id.in_(job_ids), MetricPoint.name == name)
        .group_by(MetricPoint.job_id)
        .subquery()
    )
    rows = session.execute(
        select(MetricPoint.job_id, MetricPoint.value).join(
            latest,
            (MetricPoint.job_id == latest.c.job_id)
            & (MetricPoint.step == latest.c.step)
            & (MetricPoint.name == name),
        )
    ).all()
    return {job_id: value for job_id, value in rows}


def request_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "vitq_http_request_duration_seconds",
        "HTTP request latency, by method, route template and status.",
        labelnames=["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


class LatencyMiddleware:
    """Times each HTTP request to its last body byte. Pure ASGI (no BaseHTTPMiddleware): streamed responses
    are not buffered, and the route the router matched is read back from the scope it filled in."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started is answered with a 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            if route is not None:
                template = route.path
            elif scope.get("root_path"):  # inside a Mount (the dashboard's static files): its prefix
                template = scope["root_path"] + "/{path}"
            else:
                template = "unmatched"
            self.histogram.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)
