"""The comparison view's speed in headless Chromium: JOBS jobs of STEPS logged steps each (not a test; prints figures).

    .venv/bin/python bench/compare.py [--jobs 10] [--steps 100000] [--repeat 3]

Each job gets a train loss at every step (STEPS points), lr, grad_norm, images_per_s and epoch every 10 steps and a
val_top1 every 1000 steps, written straight into a fresh embedded SQLite database. `vitq serve --no-worker` then
serves it, and Chromium measures, on #/compare?ids=... with every job:
- first render: navigation until every panel has drawn all the jobs (each series downsampled by the server);
- smoothing: one move of the EMA slider until every panel is redrawn;
- x axis: switching to images seen until every panel is redrawn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's api/vit and its tests package

from playwright.sync_api import Page, sync_playwright
from sqlalchemy import insert, update

from api.core.db import session_scope
from api.core.migrate import upgrade
from api.core.models import Job, JobStatus, MetricPoint
from api.core.state_machine import submit
from tests.api.cli.service import free_port, service_env, wait_healthy
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # launched as the browser tests launch it
from vit.config import parse_spec_text

POINTS_PER_SERIES = 1500  # what the compare view asks the server for (api/server/static/js/compare.js)
LOAD_TIMEOUT_MS = 300_000  # a loaded shared machine downsamples 10 x 100k points slowly


def seed(database_url: str, *, jobs: int, steps: int) -> list[int]:
    ids = []
    with session_scope(database_url) as session:
        for j in range(jobs):
            spec = parse_spec_text(
                f"kind: pretrain\nname: lr-{j}\nmodel: {{variant: Ti/4, image_size: 32}}\n"
                f"optim: {{lr: {1e-4 * (j + 1):.1e}}}\ntrain: {{steps: {steps}, batch_size: 128}}\n"
            )
            job = submit(session=session, spec=spec, max_attempts=1, parent=None)
            session.flush()
            session.execute(
                update(Job).where(Job.id == job.id).values(status=JobStatus.succeeded, step=steps)
            )
            ids.append(job.id)
            now = time.time()
            rows = [
                {
                    "job_id": job.id,
                    "name": "loss",
                    "step": s,
                    "value": 2.3 / (1 + s * (j + 1) / 20_000),
                    "time": now,
                }
                for s in range(1, steps + 1)
            ]
            for name, value in (("lr", 1e-3), ("grad_norm", 1.5), ("images_per_s", 4000.0), ("epoch", 0.01)):
                rows += [
                    {
                        "job_id": job.id,
                        "name": name,
                        "step": s,
                        "value": value * (1 + s % 7 / 10),
                        "time": now,
                    }
                    for s in range(10, steps + 1, 10)
                ]
            rows += [
                {
                    "job_id": job.id,
                    "name": "val_top1",
                    "step": s,
                    "value": 1 - 1 / (1 + s / 5000),
                    "time": now,
                }
                for s in range(1000, steps + 1, 1000)
            ]
            for start in range(0, len(rows), 50_000):
                session.execute(insert(MetricPoint), rows[start : start + 50_000])
            session.commit()
    return ids


# Resolves once every panel's canvas has been redrawn after `action` ran (uPlot draws on the next frame).
REDRAW = """async (action) => {
  const start = performance.now();
  const el = document.querySelector(action.selector);
  el.value = action.value;
  el.dispatchEvent(new Event(action.event));
  await new Promise(requestAnimationFrame);
  await new Promise(requestAnimationFrame);
  return performance.now() - start;
}"""


# The browser's share alone: a Board (the compare view's charts) fed JOBS runs of POINTS points per series
# (loss, lr, images_per_s), then drawn; then one smoothing change. No server in the way.
CLIENT_RENDER = """async ({ jobs, points }) => {
  const { Board } = await import("/static/js/charts.js");
  const holder = document.body.appendChild(document.createElement("div"));
  holder.style.width = "1872px";
  const board = new Board(holder);
  const steps = Array.from({ length: points }, (_, i) => (i + 1) * Math.round(100000 / points));
  for (let j = 1; j <= jobs; j++) {
    board.addRun({ id: j, name: `job ${j}`, batchSize: 128 });
    const series = (f) => ({ steps, values: steps.map(f) });
    board.setPoints(j, {
      loss: series((s) => 2.3 / (1 + (s * j) / 20000) + Math.random() * 0.05),
      lr: series((s) => 1e-3 * Math.min(s / 1000, 1)),
      images_per_s: series(() => 4000 + Math.random() * 100),
    }, { replace: true });
  }
  const frame = () => new Promise(requestAnimationFrame);
  let start = performance.now();
  board.render();
  await frame();
  const render = performance.now() - start;
  start = performance.now();
  board.setView({ smoothing: 0.6 });
  await frame();
  const smoothing = performance.now() - start;
  board.destroy();
  holder.remove();
  return { render, smoothing };
}"""


def client_render_ms(page: Page, jobs: int, points: int) -> dict[str, float]:
    return dict(page.evaluate(CLIENT_RENDER, {"jobs": jobs, "points": points}))


def first_render_ms(page: Page, url: str, jobs: int) -> float:
    page.goto("about:blank")
    start = time.perf_counter()
    page.goto(url)
    page.locator("#view[data-loaded=true]").wait_for(timeout=LOAD_TIMEOUT_MS)
    # Every job's line is in the loss panel's legend once the board has rendered all of them.
    page.wait_for_function(
        f"document.querySelectorAll('[data-panel=loss] .u-legend .u-series:not([hidden])').length === {jobs + 1}",
        timeout=LOAD_TIMEOUT_MS,
    )
    page.evaluate("() => new Promise(requestAnimationFrame)")
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vitq-bench-compare-"))
    database_url = f"sqlite:///{home / 'vitq.db'}"
    upgrade(database_url)
    start = time.perf_counter()
    ids = seed(database_url, jobs=args.jobs, steps=args.steps)
    print(f"seeded {args.jobs} jobs x {args.steps:,} steps in {time.perf_counter() - start:.1f} s")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**service_env(home, url), "VITQ_DATABASE_URL": database_url, "VITQ_AUTH": "off"}
    vitq = str(Path(sys.executable).with_name("vitq"))
    log = (home / "serve.log").open("wb")
    command = [vitq, "serve", "--no-worker", "--port", str(port), "--log-level", "warning"]
    serve = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, serve, home / "serve.log")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            print(f"load average before measuring: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
            page.goto(f"{url}/#/sweeps")  # a light page: the static files are what the measurement needs
            client = {n: client_render_ms(page, args.jobs, n) for n in (POINTS_PER_SERIES, args.steps)}
            for points, ms in client.items():
                print(
                    f"charts alone, {args.jobs} jobs x {points:,} points per series (3 series): "
                    f"draw {ms['render']:.0f} ms, smoothing change {ms['smoothing']:.0f} ms"
                )
            compare = f"{url}/#/compare?ids={','.join(map(str, ids))}"
            first_render_ms(page, compare, args.jobs)  # warm the server and the browser cache
            render = [first_render_ms(page, compare, args.jobs) for _ in range(args.repeat)]
            smoothing = [
                float(
                    page.evaluate(
                        REDRAW, {"selector": "[aria-label=smoothing]", "value": v, "event": "input"}
                    )
                )
                for v in ("0.6", "0.9", "0.3")[: args.repeat]
            ]
            x_axis = [
                float(
                    page.evaluate(
                        REDRAW, {"selector": "[aria-label='x axis']", "value": v, "event": "change"}
                    )
                )
                for v in ("images", "time", "step")[: args.repeat]
            ]
            browser.close()
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()
    median = statistics.median
    runs = ", ".join(f"{v:.0f}" for v in render)
    print(f"compare view first render ({args.jobs} jobs): median {median(render):.0f} ms (runs: {runs})")
    print(f"smoothing slider move, every panel redrawn: median {median(smoothing):.0f} ms")
    print(f"x axis switch, every panel redrawn: median {median(x_axis):.0f} ms")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().machine}, {CHROMIUM} headless")


if __name__ == "__main__":
    main()
