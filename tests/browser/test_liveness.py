"""The dashboard says when no worker is alive, and a queued job says its place and why it waits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import update

from api.client import VitqClient
from api.core import workers
from api.core.db import session_scope
from api.core.models import Job, JobStatus, utcnow
from tests.api.cli.service import VITQ, free_port, service_env, stop, tiny_spec, wait_healthy

pytestmark = pytest.mark.browser


def test_no_worker_banner_and_a_queued_jobs_place(page: Page, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [VITQ, "serve", "--no-worker", "--port", str(port), "--log-level", "warning"],
            env=service_env(home, url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, serve, log_path)
        with VitqClient(url) as client:
            first = client.submit(tiny_spec("first"))["id"]
            second = client.submit(tiny_spec("second"))["id"]
        page.goto(f"{url}/#/jobs/{second}")
        banner = page.locator("#no-worker")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("No worker is running")
        expect(page.locator("dd", has_text="no worker is running")).to_be_visible()
        expect(page.locator("div", has=page.locator("dt", has_text="Place in queue"))).to_contain_text("2")
        database = f"sqlite:///{home / 'vitq.db'}"
        with session_scope(database) as session:  # a worker with two GPUs announces itself
            gpus = [{"index": i, "name": "NVIDIA H100", "memory_mb": 81920} for i in (0, 1)]
            workers.announce(
                session=session, name="host-a:1", host="host-a", pid=1, devices=gpus, concurrency=2
            )
        expect(banner).to_be_hidden(timeout=15_000)
        expect(page.locator("dd", has_text="waiting for a free worker (1 job ahead)")).to_be_visible(
            timeout=15_000
        )
        with session_scope(database) as session:  # it runs the first job on its GPU 1
            session.execute(
                update(Job)
                .where(Job.id == first)
                .values(status=JobStatus.running, worker="host-a:1", devices="1", heartbeat_at=utcnow())
            )
            session.commit()
        page.goto(f"{url}/#/workers")
        row = page.locator("tr[data-worker='host-a:1']")
        expect(row.locator("li[data-device='1']")).to_contain_text(f"job #{first}")
        expect(row.locator("li[data-device='0']")).to_contain_text("free")
        expect(row).to_contain_text(f"#{first}")
    finally:
        stop(serve)
