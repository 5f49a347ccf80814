"""Benchmark of watching a running job (issue 18, item 6; not a test): WATCHERS clients follow one job's events
(GET /jobs/{id}/events) while a writer stores a metric point and a log line every half second, as a trainer's
supervisor does. Prints the API process's CPU (share of one core) and how long each stored point took
to reach each watcher. Targets: under 25 % of a core for 100 watchers, every point within 2 s.

    .venv/bin/python bench/watch.py [--watchers 100] [--seconds 20] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.client.http import server_sent_events  # noqa: E402
from api.core.db import scratch_database  # noqa: E402
from api.core.migrate import upgrade  # noqa: E402
from bench.seeding import hold_job  # noqa: E402
from bench.service import Server, server  # noqa: E402
from vit.rundir import LOG_FILE  # noqa: E402
from vit.rundir import MetricPoint as Point  # noqa: E402
from worker.fenced_writes import add_metric_points  # noqa: E402

PG_SERVER = os.environ.get("VITQ_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPEC = {"kind": "pretrain", "name": "watched", "train": {"steps": 1_000_000}}
TARGETS = {"cpu_share": 0.25, "latency_s": 2.0}


async def watch(url: str, job_id: int, latencies: list[float], stop: asyncio.Event) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=None) as http,
        http.stream("GET", f"/jobs/{job_id}/events") as response,
    ):
        lines: list[str] = []
        async for line in response.aiter_lines():
            if stop.is_set():
                return
            if line:
                lines.append(line)
                continue
            for kind, data in server_sent_events([*lines, ""]):
                if kind == "metrics":
                    now = time.time()
                    stored = json.loads(data)["series"].get("stored_at", {}).get("values", [])
                    latencies.extend(now - t for t in stored)
            lines = []


def write(database_url: str, job_id: int, log: Path, stop: threading.Event) -> int:
    engine = create_engine(database_url)
    step = 0
    with Session(engine) as session:
        claim = hold_job(session, job_id)
        while not stop.wait(0.5):
            step += 1
            now = time.time()
            add_metric_points(
                session=session, claim=claim, points=[Point("stored_at", step, now, now)], step=step
            )
            with log.open("a") as file:
                file.write(f"step {step}\n")
    engine.dispose()
    return step


async def run(api: Server, database_url: str, log: Path, job_id: int, args: argparse.Namespace) -> None:
    url = api.url
    latencies: list[float] = []
    stop = asyncio.Event()
    watchers = [asyncio.create_task(watch(url, job_id, latencies, stop)) for _ in range(args.watchers)]
    await asyncio.sleep(3)  # every watcher connected
    writing = threading.Event()
    writer = threading.Thread(target=write, args=(database_url, job_id, log, writing))
    before, started = api.cpu_seconds(), time.monotonic()
    writer.start()
    await asyncio.sleep(args.seconds)
    share = (api.cpu_seconds() - before) / (time.monotonic() - started)
    writing.set()
    writer.join()
    stop.set()
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    latencies.sort()
    print(
        f"\n{args.watchers} watchers of one running job for {args.seconds:.0f} s (a point and a log line every 0.5 s)"
    )
    verdict = "ok" if share < TARGETS["cpu_share"] else "MISSED"
    print(f"API process CPU: {100 * share:.1f} % of one core (target < 25 %): {verdict}")
    if latencies:
        worst = latencies[-1]
        verdict = "ok" if worst < TARGETS["latency_s"] else "MISSED"
        print(
            f"stored -> seen: median {statistics.median(latencies):.2f} s, p99 "
            f"{latencies[int(0.99 * (len(latencies) - 1))]:.2f} s, max {worst:.2f} s over {len(latencies):,} "
            f"deliveries (target < 2 s): {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sqlite", action="store_true", help="the embedded database instead of PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, scratch_database(PG_SERVER, "vitq_watch") as pg_url:
        database_url = f"sqlite:///{home}/vitq.db" if args.sqlite else pg_url
        upgrade(database_url)
        env = {"VITQ_DATABASE_URL": database_url, "VITQ_HOME": home, "VITQ_AUTH": "off"}
        env["VITQ_BROKER_URL"] = f"sqla+sqlite:///{home}/broker.db"
        port = 18741
        with server("api.server.app:create_app", port, env) as api:
            job_id = httpx.post(api.url + "/jobs", json=SPEC).json()["id"]
            log = Path(home) / "storage" / "jobs" / str(job_id) / LOG_FILE
            log.parent.mkdir(parents=True, exist_ok=True)
            asyncio.run(run(api, database_url, log, job_id, args))


if __name__ == "__main__":
    main()
