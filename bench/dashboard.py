"""Dashboard speed in headless Chromium at scale (not a test; prints figures).

    .venv/bin/python bench/dashboard.py [--jobs 500] [--points 100000] [--repeat 5] [--postgres [ADMIN_URL]]

Fills a fresh embedded database through the data layer (api.core.state_machine): JOBS jobs in every state and
one running job with POINTS metric points (train metrics every step, eval every 500 steps), starts
`vitq serve --no-worker` on it and measures in Chromium:
- list page load: navigation until the first page of rows is rendered;
- job page first chart render: navigation until the (server-downsampled) curves are drawn;
- chart update: one incremental poll (`since` cursor, 100 new points per series inserted meanwhile) through to
  the redrawn canvases;
- list refresh: one poll of the list (50 rows, diffed in place).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's api/vit and its tests package

from playwright.sync_api import Page, sync_playwright
from sqlalchemy import update

from api.core.db import scratch_database, session_scope
from api.core.migrate import upgrade
from api.core.models import Job, JobStatus, utcnow
from api.core.state_machine import submit as create_job
from bench.seeding import insert_points
from tests.api.cli.service import free_port, service_env, wait_healthy
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # launched as the browser tests launch it
from vit.config import parse_spec_text
from vit.rundir import MetricPoint as MetricRow

TRAIN_METRICS = ("loss", "lr", "grad_norm", "images_per_s")
STATUSES = list(JobStatus)


def spec_text(i: int, steps: int) -> str:
    kind = "pretrain" if i % 3 else "finetune"
    init = "init: {weights: /tmp/none}\n" if kind == "finetune" else ""
    return f"kind: {kind}\nname: run-{i:03d}\nmodel: {{variant: Ti/4, image_size: 32}}\ntrain: {{steps: {steps}}}\n{init}"


def train_rows(step: int, now: float) -> list[MetricRow]:
    loss = 2.3 * (0.2 + 0.8 / (1 + step / 2000)) + random.gauss(0, 0.05)
    return [
        MetricRow("loss", step, loss, now),
        MetricRow("lr", step, 1e-3 * min(step / 1000, 1.0), now),
        MetricRow("grad_norm", step, 1.0 + random.random(), now),
        MetricRow("images_per_s", step, 4000 + random.gauss(0, 100), now),
    ]


def seed(database_url: str, *, jobs: int, points: int) -> tuple[int, int]:
    """JOBS small jobs and one big running job; returns (big job id, its last step)."""
    random.seed(0)
    with session_scope(database_url) as session:
        for i in range(jobs):
            job = create_job(
                session=session, spec=parse_spec_text(spec_text(i, 1000)), max_attempts=3, parent=None
            )
            status = STATUSES[i % len(STATUSES)]
            session.flush()
            step = {JobStatus.queued: 0, JobStatus.running: 400, JobStatus.succeeded: 1000}.get(status, 200)
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status=status, step=step, started_at=None if status == JobStatus.queued else utcnow())
            )
            insert_points(
                session,
                job.id,
                [
                    *train_rows(step, time.time()),
                    MetricRow("val_top1", step, random.random(), time.time()),
                ],
            )
        steps = points // len(TRAIN_METRICS)
        big = create_job(
            session=session, spec=parse_spec_text(spec_text(jobs, steps * 2)), max_attempts=3, parent=None
        )
        session.flush()
        session.execute(
            update(Job)
            .where(Job.id == big.id)
            .values(status=JobStatus.running, step=steps, started_at=utcnow(), name="big-100k")
        )
        session.commit()
        batch: list[MetricRow] = []
        for step in range(1, steps + 1):
            batch += train_rows(step, time.time())
            if step % 500 == 0:
                batch += [
                    MetricRow("val_loss", step, 0.5 + 1 / (1 + step / 2000), time.time()),
                    MetricRow("val_top1", step, 1 - 1 / (1 + step / 2000), time.time()),
                ]
            if len(batch) >= 20_000:
                insert_points(session, big.id, batch)
                batch = []
        insert_points(session, big.id, batch)
        return big.id, steps


def timed(page: Page, url: str, ready: str) -> float:
    page.goto("about:blank")
    start = time.perf_counter()
    page.goto(url)
    page.locator(ready).wait_for()
    page.evaluate("() => new Promise(requestAnimationFrame)")  # until the frame with the drawing is produced
    return (time.perf_counter() - start) * 1000


def chart_update_ms(page: Page, database_url: str, job_id: int, first_step: int) -> float:
    with session_scope(database_url) as session:
        rows = [row for step in range(first_step, first_step + 100) for row in train_rows(step, time.time())]
        insert_points(session, job_id, rows)
    # The job page's own code path: fetch newer points with the cursor and redraw every chart.
    return float(
        page.evaluate(
            """async () => {
                const start = performance.now();
                await document.querySelector('#view').refreshMetrics();
                await new Promise(requestAnimationFrame);
                return performance.now() - start;
            }"""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        nargs="?",
        const="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="use a throwaway PostgreSQL database (default: the embedded SQLite)",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vitq-bench-"))
    with database(args.postgres, home) as database_url:
        run(args, home, database_url)


@contextmanager
def database(postgres_admin_url: str | None, home: Path) -> Iterator[str]:
    """The embedded default's SQLite file, or a throwaway PostgreSQL database made with the admin URL."""
    if postgres_admin_url is None:
        yield f"sqlite:///{home / 'vitq.db'}"
        return
    with scratch_database(postgres_admin_url, "vitq_bench") as url:
        yield url


def run(args: argparse.Namespace, home: Path, database_url: str) -> None:
    upgrade(database_url)
    start = time.perf_counter()
    big_id, last_step = seed(database_url, jobs=args.jobs, points=args.points)
    print(
        f"seeded {args.jobs} jobs + job {big_id} with {args.points:,} points in {time.perf_counter() - start:.1f} s"
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**service_env(home, url), "VITQ_DATABASE_URL": database_url}
    serve = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("vitq")),
            "serve",
            "--no-worker",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        wait_healthy(url, serve, home / "serve.log")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            timed(page, f"{url}/", "#view[data-loaded=true]")  # warm the server and the browser cache
            list_ms = [timed(page, f"{url}/", "#view[data-loaded=true]") for _ in range(args.repeat)]
            refresh_ms = [
                float(
                    page.evaluate("""async () => {
                const start = performance.now();
                await (await fetch('/jobs?limit=50&offset=0')).json();
                return performance.now() - start;
            }""")
                )
                for _ in range(args.repeat)
            ]
            job_ms = [
                timed(page, f"{url}/#/jobs/{big_id}", "#view[data-metrics-loaded=true]")
                for _ in range(args.repeat)
            ]
            update_ms = [
                chart_update_ms(page, database_url, big_id, last_step + 1 + 100 * i)
                for i in range(args.repeat)
            ]
            browser.close()
    finally:
        serve.terminate()
        serve.wait(30)
    median = statistics.median
    print(
        f"list page load ({args.jobs} jobs, first 50 rendered): median {median(list_ms):.0f} ms  (runs: {', '.join(f'{v:.0f}' for v in list_ms)})"
    )
    print(f"list poll (GET /jobs?limit=50): median {median(refresh_ms):.0f} ms")
    print(
        f"job page first chart render ({args.points:,} points, downsampled): median {median(job_ms):.0f} ms  (runs: {', '.join(f'{v:.0f}' for v in job_ms)})"
    )
    print(
        f"chart update (100 new steps, incremental fetch + redraw of 4 charts): median {median(update_ms):.0f} ms"
    )
    print(f"database: {database_url.split(':', 1)[0]}")
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().machine}, {CHROMIUM} headless")


if __name__ == "__main__":
    main()
