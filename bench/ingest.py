"""Metric ingest rate on PostgreSQL, and POST → running latency with an idle worker (not a test: prints figures).

    .venv/bin/python bench/ingest.py [--points 200000] [--skip-latency]

1. worker.fenced_writes.add_metric_points: batches of rows straight into metric_points.
2. The supervisor's follow path: a metrics.jsonl of N lines (5 metrics each, as the trainer writes them) read
   by vit.rundir.MetricsReader and stored with add_metric_points, as the supervisor does while a job runs.
3. POST /jobs → status running, and → the first metrics line in the database, with a real worker idle on
   Redis (needs api.server.app); the trainer's start-up (python, torch, torchrun) dominates the second figure.
Uses a scratch database on the PostgreSQL server (VITQ_BENCH_PG_ADMIN_URL, default the test server).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's bench package

from api.core.db import scratch_database
from api.core.migrate import upgrade
from api.core.models import Job, JobStatus, MetricPoint
from api.core.settings import Settings
from bench.seeding import hold_job
from vit.config import JobSpec
from vit.rundir import MetricPoint as Point
from vit.rundir import MetricsReader
from worker.fenced_writes import add_metric_points

PG_ADMIN_URL = os.environ.get("VITQ_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VITQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH = 5000
TINY_SPEC = {
    "kind": "pretrain",
    "name": "bench-latency",
    "model": {"variant": "Ti/4", "image_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "data": {"dataset": "synthetic", "synthetic_size": 256, "num_workers": 0},
    "train": {"steps": 20, "batch_size": 32, "log_every": 1},
    "resources": {"device": "cpu"},
}


def create_schema(url: str) -> None:
    upgrade(url)


def new_job(session: Session) -> int:
    spec = JobSpec.model_validate(TINY_SPEC).resolved().model_dump(mode="json")
    job = Job(name="bench", kind="pretrain", spec=spec, total_steps=1, status=JobStatus.queued)
    session.add(job)
    session.commit()
    return job.id


def count_points(session: Session, job_id: int) -> int:
    rows = session.execute(select(MetricPoint.id).where(MetricPoint.job_id == job_id)).all()
    return len(rows)


def bench_add_metric_points(url: str, points: int) -> float:
    engine = create_engine(url)
    with Session(engine) as session:
        job_id = new_job(session)
        claim = hold_job(session, job_id)
        rows = [Point("loss", step, 1.0 / (step + 1), 1.7e9 + step) for step in range(points)]
        start = time.perf_counter()
        for offset in range(0, points, BATCH):
            add_metric_points(session=session, claim=claim, points=rows[offset : offset + BATCH], step=offset)
        elapsed = time.perf_counter() - start
        assert count_points(session, job_id) == points
    engine.dispose()
    return points / elapsed


def bench_follow(url: str, points: int, directory: Path) -> float:
    metrics = ("loss", "lr", "grad_norm", "images_per_s", "epoch")
    path = directory / "metrics.jsonl"
    with path.open("w") as handle:
        for step in range(points // len(metrics)):
            record = {"step": step, "time": 1.7e9 + step, **{name: step * 0.001 for name in metrics}}
            handle.write(json.dumps(record) + "\n")
    engine = create_engine(url)
    with Session(engine) as session:
        job_id = new_job(session)
        claim = hold_job(session, job_id)
        reader = MetricsReader(directory)
        start = time.perf_counter()
        while batch := reader.read_new():
            add_metric_points(session=session, claim=claim, points=batch, step=reader.last_step)
        elapsed = time.perf_counter() - start
        stored = count_points(session, job_id)
    engine.dispose()
    return stored / elapsed


def bench_latency(url: str, directory: Path, runs: int) -> tuple[list[float], list[float]]:
    import uvicorn

    from api.server.app import create_app

    queue = f"vitq-bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "VITQ_DATABASE_URL": url,
        "VITQ_BROKER_URL": REDIS_URL,
        "VITQ_QUEUE": queue,
        "VITQ_HOME": str(directory),
        "VITQ_STORAGE": str(directory / "storage"),
        "VITQ_DATA_DIR": str(directory / "data"),
        "OMP_NUM_THREADS": "1",
    }
    settings = Settings(
        database_url=url, broker_url=REDIS_URL, queue=queue, home=directory, storage=directory / "storage"
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    worker_log = directory / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log, stderr=log)
    engine = create_engine(url)
    to_running, to_metrics = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while b" ready." not in worker_log.read_bytes():  # Celery's banner: consuming, idle
                time.sleep(0.1)
            for _ in range(runs):
                start = time.perf_counter()
                job_id = client.post("/jobs", json=TINY_SPEC).raise_for_status().json()["id"]
                running_at = first_metric_at = None
                while first_metric_at is None or running_at is None:
                    with Session(engine) as session:
                        job = session.get(Job, job_id)
                        assert job is not None and job.status != JobStatus.failed, job and job.error
                        if running_at is None and job.status != JobStatus.queued:
                            running_at = time.perf_counter() - start
                        if first_metric_at is None and count_points(session, job_id):
                            first_metric_at = time.perf_counter() - start
                    time.sleep(0.01)
                to_running.append(running_at)
                to_metrics.append(first_metric_at)
                while client.get(f"/jobs/{job_id}").json()["status"] == "running":
                    time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
        server.should_exit = True
        engine.dispose()
    return to_running, to_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    with scratch_database(PG_ADMIN_URL, "vitq_bench") as url, tempfile.TemporaryDirectory() as scratch:
        create_schema(url)
        rate = bench_add_metric_points(url, args.points)
        print(f"add_metric_points ({BATCH}-row batches, PostgreSQL): {rate:,.0f} points/s (target >= 60,000)")
        rate = bench_follow(url, args.points, Path(scratch))
        print(f"follow metrics.jsonl -> database (supervisor path): {rate:,.0f} points/s (target >= 60,000)")
        if not args.skip_latency:
            to_running, to_metrics = bench_latency(url, Path(scratch), args.latency_runs)
            print(
                f"POST /jobs -> running, idle worker on Redis: median {statistics.median(to_running):.3f} s "
                f"(runs: {', '.join(f'{t:.3f}' for t in to_running)}; target < 1 s)"
            )
            print(
                f"POST /jobs -> first metrics line stored: median {statistics.median(to_metrics):.2f} s "
                f"(runs: {', '.join(f'{t:.2f}' for t in to_metrics)}; target < 1 s + trainer start-up <= 5 s)"
            )


if __name__ == "__main__":
    main()
