"""Benchmark of the REST API on PostgreSQL + Redis (issue 4, item 8; not a test).

Runs the real app under uvicorn (one worker process) and, side by side in the same run, a *floor*: a bare
FastAPI app on the same database and Redis that validates the body, does one INSERT, one commit and one Redis
LPUSH. httpx async clients drive POST /jobs and GET /jobs/{id} at 1, 8 and 32 concurrent clients, in rounds that
alternate floor, API, API, floor, ... (the 'rounds' column: the lowest and highest ratio of one pair). Then metric
ingest through worker.fenced_writes.add_metric_points (the worker's path) and GET /jobs/{id}/metrics on a 100k-point job,
whole and downsampled. Creates and drops its own database and queue. The API runs with authentication on (a bearer
token looked up on every request; --auth off to compare); the floor checks nothing.

    .venv/bin/python bench/service.py [--seconds 2] [--rounds 6] [--points 100000] [--auth required|off] [--queued 10000]
        [--flat 100,100000]

With --queued N, N queued jobs wait in the database during the load (the API numbers each GET's place among
them). With authentication on, the floor pays the one token lookup any authenticated API pays. --flat times one
queued job's GET and the 50-job list page on two databases, one holding the first and one the second number of
jobs (queued, as a backlog would be), each served by its own API process and asked in turn, and prints the ratio
(target <= 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from fastapi import FastAPI, Request
from sqlalchemy import Connection, create_engine, delete, insert, select, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.core import tokens  # noqa: E402
from api.core.db import scratch_database  # noqa: E402
from api.core.migrate import upgrade  # noqa: E402
from api.core.models import ApiToken, Job, JobStatus  # noqa: E402
from bench.seeding import hold_job  # noqa: E402
from vit.config import JobSpec  # noqa: E402
from vit.rundir import MetricPoint as MetricRow  # noqa: E402
from worker.fenced_writes import add_metric_points  # noqa: E402

PG_SERVER = os.environ.get("VITQ_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VITQ_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SPEC = {
    "kind": "pretrain",
    "name": "bench",
    "model": {"variant": "Ti/4", "image_size": 32},
    "data": {"dataset": "digits"},
    "train": {"steps": 300, "batch_size": 128},
}
TARGETS = {"vs_floor": 0.8, "flat": 1.5, "metrics_whole_ms": 400.0, "metrics_downsampled_ms": 50.0}


# ------------------------------------------------------------------------------------------- the floor


def floor_app() -> FastAPI:
    """Validate the body, one INSERT, one commit, one LPUSH: the least any POST /jobs can do."""
    engine = create_engine(os.environ["VITQ_DATABASE_URL"], pool_size=10, max_overflow=20)
    broker = redis.Redis.from_url(os.environ["VITQ_BROKER_URL"])
    queue = os.environ["VITQ_QUEUE"]
    authenticated = os.environ.get("VITQ_AUTH") == "required"
    app = FastAPI()

    def _token(connection: Connection, request: Request) -> None:
        """The one lookup an authenticated API pays: the bearer token's hash in the tokens table."""
        if authenticated:
            token = request.headers["authorization"].removeprefix("Bearer ")
            digest = hashlib.sha256(token.encode()).hexdigest()
            connection.execute(select(ApiToken.owner).where(ApiToken.token_hash == digest)).one()

    @app.post("/jobs", status_code=201)
    async def submit(request: Request) -> dict[str, Any]:
        spec = JobSpec.model_validate_json(await request.body())
        return await asyncio.to_thread(_store, spec, request)

    def _store(spec: JobSpec, request: Request) -> dict[str, Any]:
        with engine.begin() as connection:
            _token(connection, request)
            job_id = connection.execute(
                insert(Job)
                .values(
                    name=spec.name,
                    kind=spec.kind,
                    status=JobStatus.queued,
                    spec=spec.model_dump(mode="json"),
                    attempt=0,
                    max_attempts=3,
                    step=0,
                    total_steps=spec.train.steps,
                    cancel_requested=False,
                    created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                .returning(Job.id)
            ).scalar_one()
        broker.lpush(queue, str(job_id))
        return {"id": job_id, "status": "queued"}

    @app.get("/jobs/{job_id}")
    def show(job_id: int, request: Request) -> dict[str, Any]:
        with engine.connect() as connection:
            _token(connection, request)
            row = connection.execute(select(Job.__table__).where(Job.id == job_id)).mappings().one()
        return dict(row)

    return app


# ------------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Server:
    url: str
    process: psutil.Process

    def cpu_seconds(self) -> float:
        """The CPU time its process has used, user and system."""
        times = self.process.cpu_times()
        return times.user + times.system


@contextmanager
def server(app: str, port: int, env: dict[str, str]) -> Iterator[Server]:
    command = [sys.executable, "-m", "uvicorn", "--factory", app, "--port", str(port), "--workers", "1"]
    command += ["--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT)]
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{app} did not start") from None
                time.sleep(0.2)
        yield Server(url, psutil.Process(process.pid))
    finally:
        process.terminate()
        process.wait(10)


# ------------------------------------------------------------------------------------------- load


async def load(
    side: Server, method: str, clients: int, seconds: float, job_ids: list[int], headers: dict[str, str]
) -> dict[str, Any]:
    """`clients` clients POSTing (or GETting `job_ids`) for `seconds`: each request's latency, the time and the
    server's CPU time. Timed from when every client has its connection open: making an httpx client costs tens
    of milliseconds of CPU (its TLS context), and made inside the window, 32 of them took most of a 2-s round."""
    latencies: list[float] = []
    body = httpx.Request("POST", side.url, json=SPEC).content
    https = [httpx.AsyncClient(base_url=side.url, timeout=30, headers=headers) for _ in range(clients)]
    try:
        await asyncio.gather(*(http.get("/openapi.json") for http in https))  # the connections, opened
        cpu_before, started = side.cpu_seconds(), time.perf_counter()
        deadline = started + seconds

        async def client(index: int, http: httpx.AsyncClient) -> None:
            n = index
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                if method == "POST":
                    response = await http.post(
                        "/jobs", content=body, headers={"content-type": "application/json"}
                    )
                    assert response.status_code == 201, response.text
                    job_ids.append(response.json()["id"])
                else:
                    response = await http.get(f"/jobs/{job_ids[n % len(job_ids)]}")
                    assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - start)
                n += clients

        await asyncio.gather(*(client(i, http) for i, http in enumerate(https)))
        elapsed, cpu = time.perf_counter() - started, side.cpu_seconds() - cpu_before
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return {"latencies": latencies, "elapsed": elapsed, "cpu": cpu}


def compare(
    api: Server, floor: Server, method: str, clients: int, args: argparse.Namespace, headers: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """The API's and the floor's figures at one level, over `--rounds` rounds in the order floor, API, API, floor,
    ...: this machine's speed drifts (other tenants, clocks), and alternating cancels the drift a single
    floor-then-API pair would charge to one side. Each side's req/s is its requests over its time in all rounds;
    its CPU per request (its server process's, user and system) is the steadier figure where the rates swing."""
    ids: dict[str, list[int]] = {}
    if method == "GET":  # each side reads jobs it stored itself
        for label, side in (("floor", floor), ("api", api)):
            ids[label] = [
                httpx.post(side.url + "/jobs", json=SPEC, headers=headers).json()["id"] for _ in range(20)
            ]
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "api": []}
    for round_ in range(args.rounds):
        order = (("floor", floor), ("api", api)) if round_ % 2 == 0 else (("api", api), ("floor", floor))
        for label, side in order:
            run = load(side, method, clients, args.seconds, list(ids.get(label, [])), headers)
            runs[label].append(asyncio.run(run))
    api_figures, floor_figures = merged(runs["api"]), merged(runs["floor"])
    per_round = [rate(a) / rate(f) for a, f in zip(runs["api"], runs["floor"], strict=True)]
    api_figures["round_min"], api_figures["round_max"] = min(per_round), max(per_round)
    return api_figures, floor_figures


def rate(run: dict[str, Any]) -> float:
    return len(run["latencies"]) / float(run["elapsed"])


def merged(runs: list[dict[str, Any]]) -> dict[str, float]:
    latencies = sorted(latency for run in runs for latency in run["latencies"])
    return {
        "rps": len(latencies) / sum(float(run["elapsed"]) for run in runs),
        "cpu_ms": 1000 * sum(float(run["cpu"]) for run in runs) / len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def timed_get(
    url: str, path: str, headers: dict[str, str], params: dict[str, Any] | None = None, repeats: int = 7
) -> tuple[float, int]:
    """Median wall time of a GET (ms), and the number of metric points in the answer (0 for other routes)."""
    times, points = [], 0
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        for _ in range(repeats):
            start = time.perf_counter()
            response = http.get(path, params=params)
            times.append(1000 * (time.perf_counter() - start))
            assert response.status_code == 200, response.text
            series = response.json().get("series", {})
            points = sum(len(s["steps"]) for s in series.values())
    return statistics.median(times), points


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per round, load level, endpoint and side")
    parser.add_argument("--rounds", type=int, default=6, help="alternating floor/API rounds per level")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--auth", choices=["required", "off"], default="required", help="the API's VITQ_AUTH")
    parser.add_argument(
        "--queued", type=int, default=10_000, help="queued jobs in the database during the load"
    )
    parser.add_argument(
        "--flat", default="100,100000", help="job counts to compare one GET and a list page at"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    queue = f"vitq-bench-{uuid.uuid4().hex[:8]}"
    with scratch_database(PG_SERVER, "vitq_bench") as database_url, tempfile.TemporaryDirectory() as home:
        env = {
            "VITQ_DATABASE_URL": database_url,
            "VITQ_BROKER_URL": REDIS_URL,
            "VITQ_QUEUE": queue,
            "VITQ_HOME": home,
            "VITQ_AUTH": args.auth,
        }
        try:
            upgrade(database_url)
            headers = {"authorization": f"Bearer {bench_token(database_url)}"}
            add_queued_jobs(database_url, args.queued)
            rows: list[tuple[str, int, dict[str, float], dict[str, float]]] = []
            with (
                server("api.server.app:create_app", 18731, env) as api,
                server("bench.service:floor_app", 18732, env) as floor,
            ):
                for method in ("POST", "GET"):
                    for clients in levels:
                        rows.append((method, clients, *compare(api, floor, method, clients, args, headers)))
                    drop_posted_jobs(database_url, args.queued)  # the GETs run with --queued jobs, as stated
                metrics = bench_metrics(api.url, database_url, args.points, headers)
            print(f"\nAPI authentication: {args.auth}; {args.queued:,} jobs queued during the load")
            report(rows, metrics)
        finally:
            redis.Redis.from_url(REDIS_URL).delete(queue)
    small, large = (int(n) for n in args.flat.split(","))
    with (
        scratch_database(PG_SERVER, "vitq_bench") as small_url,
        scratch_database(PG_SERVER, "vitq_bench") as large_url,
        tempfile.TemporaryDirectory() as home,
    ):
        try:
            sides = []
            for port, database_url, jobs in ((18733, small_url, small), (18734, large_url, large)):
                upgrade(database_url)
                add_queued_jobs(database_url, jobs)
                token = bench_token(database_url)
                side_env = {**env, "VITQ_DATABASE_URL": database_url, "VITQ_HOME": f"{home}/{port}"}
                sides.append((server("api.server.app:create_app", port, side_env), token))
            with sides[0][0] as small_api, sides[1][0] as large_api:
                costs = flat_costs([(small_api.url, sides[0][1]), (large_api.url, sides[1][1])])
            report_flat(costs, small, large)
        finally:
            redis.Redis.from_url(REDIS_URL).delete(queue)


def add_queued_jobs(database_url: str, count: int) -> None:
    """`count` queued jobs, inserted in bulk as POST /jobs stores them (a backlog of one owner's submits)."""
    resolved = JobSpec.model_validate(SPEC).resolved().model_dump(mode="json")
    row = {
        "name": "backlog",
        "kind": "pretrain",
        "status": JobStatus.queued,
        "spec": resolved,
        "total_steps": 300,
        "owner": "backlog",
    }
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for start in range(0, count, 5000):
            connection.execute(insert(Job), [row] * min(5000, count - start))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs"))
    engine.dispose()


def drop_posted_jobs(database_url: str, queued: int) -> None:
    """Back to the `queued` jobs add_queued_jobs stored (ids 1..queued): the POST levels add tens of thousands.
    Then VACUUM ANALYZE, as autovacuum would after that many changes (the test machine's PostgreSQL runs
    without it)."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(delete(Job).where(Job.id > queued))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs"))
    engine.dispose()


def flat_costs(sides: list[tuple[str, str]], repeats: int = 101) -> dict[str, tuple[float, float]]:
    """Median ms of one queued job's GET (the newest: the back of the queue) and of the 50-job list page, on two
    databases (the small and the large backlog), each served by its own API process, asked in turn request by
    request: this machine's speed drifts within seconds, and a drift must not pass for a cost of the backlog."""
    clients = [
        httpx.Client(base_url=url, timeout=60, headers={"authorization": f"Bearer {token}"})
        for url, token in sides
    ]
    try:
        newest = [http.post("/jobs", json=SPEC).json()["id"] for http in clients]
        times: dict[str, list[list[float]]] = {"job": [[], []], "list": [[], []]}
        for _ in range(repeats):
            for side, http in enumerate(clients):
                for page, path, params in (
                    ("job", f"/jobs/{newest[side]}", None),
                    ("list", "/jobs", {"limit": 50}),
                ):
                    start = time.perf_counter()
                    response = http.get(path, params=params)
                    times[page][side].append(1000 * (time.perf_counter() - start))
                    assert response.status_code == 200, response.text
    finally:
        for http in clients:
            http.close()
    return {
        page: (statistics.median(small), statistics.median(large)) for page, (small, large) in times.items()
    }


def report_flat(costs: dict[str, tuple[float, float]], small: int, large: int) -> None:
    print(f"\n{'page':<28}{f'{small:,} jobs':>14}{f'{large:,} jobs':>16}{'ratio':>8}")
    for name, label in (("job", "GET /jobs/{id} (queued)"), ("list", "GET /jobs?limit=50")):
        before, after = costs[name]
        verdict = "ok" if after / before <= TARGETS["flat"] else "MISSED"
        print(
            f"{label:<28}{before:>11.1f} ms{after:>13.1f} ms{after / before:>8.2f}  (target <= 1.5): {verdict}"
        )


def bench_token(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return tokens.create(session=session, owner="bench")[1]
    finally:
        engine.dispose()


def bench_metrics(api: str, database_url: str, points: int, headers: dict[str, str]) -> dict[str, float]:
    head = {**SPEC, "resources": {"priority": 9}}  # the head of the queue, ahead of the backlog: claimed next
    job_id = httpx.post(api + "/jobs", json=head, headers=headers).json()["id"]
    engine = create_engine(database_url)
    now = time.time()
    # The trainer's mix: train lines (loss, lr, grad_norm, images_per_s) every step, eval lines now and then.
    names = ("loss", "lr", "grad_norm", "images_per_s")
    series = [
        MetricRow(n, step, 1.0 / step, now) for step in range(1, points // len(names) + 1) for n in names
    ]
    with Session(engine) as session:
        claim = hold_job(session, job_id)
    started = time.perf_counter()
    with Session(engine) as session:
        for start in range(0, len(series), 2000):  # the supervisor's batches
            batch = series[start : start + 2000]
            add_metric_points(session=session, claim=claim, points=batch, step=batch[-1].step)
    ingest_s = time.perf_counter() - started
    # And one 100k-point series, the size the targets are stated for.
    long_job = httpx.post(api + "/jobs", json=head, headers=headers).json()["id"]
    with Session(engine) as session:
        long = [MetricRow("loss", step, 1.0 / step, now) for step in range(1, points + 1)]
        add_metric_points(session=session, claim=hold_job(session, long_job), points=long, step=points)
    # As autovacuum does after this many inserts: statistics, and the visibility map that lets a scan of the
    # covering index skip the table (VACUUM runs outside a transaction).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE metric_points"))
    engine.dispose()
    whole_ms, whole_n = timed_get(api, f"/jobs/{long_job}/metrics", headers, {"max_points": points})
    down_ms, down_n = timed_get(api, f"/jobs/{long_job}/metrics", headers, {"max_points": 1000})
    job_ms, _ = timed_get(api, f"/jobs/{long_job}", headers)
    return {
        "ingest_points_per_s": len(series) / ingest_s,
        "whole_ms": whole_ms,
        "whole_points": whole_n,
        "downsampled_ms": down_ms,
        "downsampled_points": down_n,
        "job_with_100k_points_ms": job_ms,
    }


def report(
    rows: list[tuple[str, int, dict[str, float], dict[str, float]]], metrics: dict[str, float]
) -> None:
    print(
        f"\n{'endpoint':<14}{'clients':>8}{'api req/s':>11}{'floor req/s':>13}{'ratio':>7}"
        f"{'rounds':>12}{'api p50/p99 ms':>18}{'floor p50/p99 ms':>19}{'CPU ms/req api/floor':>23}"
    )
    for method, clients, api, floor in rows:
        endpoint = "POST /jobs" if method == "POST" else "GET /jobs/{id}"
        ratio = api["rps"] / floor["rps"]
        print(
            f"{endpoint:<14}{clients:>8}{api['rps']:>11.0f}{floor['rps']:>13.0f}{ratio:>7.2f}"
            f"{api['round_min']:>7.2f}-{api['round_max']:.2f}"
            f"{api['p50_ms']:>9.1f}/{api['p99_ms']:<8.1f}{floor['p50_ms']:>10.1f}/{floor['p99_ms']:<8.1f}"
            f"{api['cpu_ms']:>14.2f}/{floor['cpu_ms']:<8.2f}"
        )
    print()
    missed = [f"{m} at {c}" for m, c, a, f in rows if a["rps"] / f["rps"] < TARGETS["vs_floor"]]
    verdict = "ok" if not missed else f"MISSED ({', '.join(missed)})"
    print(f"every level >= {TARGETS['vs_floor']}x its floor: {verdict}")
    for key, label, target in (
        ("whole_ms", "GET metrics, 100k-point series whole", TARGETS["metrics_whole_ms"]),
        ("downsampled_ms", "GET metrics, downsampled to 1000", TARGETS["metrics_downsampled_ms"]),
    ):
        verdict = "ok" if metrics[key] < target else "MISSED"
        print(f"{label}: {metrics[key]:.1f} ms (target < {target:.0f} ms): {verdict}")
    print(
        f"  points returned: whole {metrics['whole_points']:.0f}, downsampled {metrics['downsampled_points']:.0f}"
    )
    print(f"GET /jobs/{{id}} of a job with 100k points: {metrics['job_with_100k_points_ms']:.1f} ms")
    print(
        f"metric ingest (worker.fenced_writes.add_metric_points, batches of 2000): {metrics['ingest_points_per_s']:,.0f} points/s"
    )


if __name__ == "__main__":
    main()
