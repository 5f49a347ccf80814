"""GET /jobs/{id}/events: watchers are told about a running job's changes (the job, new metric points, new log
lines, its end) by one shared feed, each point and line exactly once, however late they join."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from api.client.http import server_sent_events
from api.core import state_machine as sm
from api.core.models import JobStatus
from tests.api.conftest import Api, submit
from vit.rundir import LOG_FILE
from vit.rundir import MetricPoint as Point
from worker.fenced_writes import add_metric_points


class Watcher:
    """A client reading a job's events in a thread of its own, as a dashboard or `vitq logs -f` does."""

    def __init__(self, api: Api, job_id: int, **params: Any) -> None:
        self.events: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self._read, args=(api, job_id, params), daemon=True)
        self.thread.start()

    def _read(self, api: Api, job_id: int, params: dict[str, Any]) -> None:
        with api.client.stream("GET", f"/jobs/{job_id}/events", params=params) as response:
            assert response.status_code == 200
            for event in server_sent_events(response.iter_lines()):
                self.events.append(event)

    def wait(self, kind: str, count: int = 1, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(found := [d for k, d in self.events if k == kind]) < count:
            assert time.monotonic() < deadline, f"no {kind} event within {timeout} s: {self.events}"
            time.sleep(0.05)
        return found

    def steps(self) -> list[int]:
        return [
            s for d in self.wait("metrics") for s in json.loads(d)["series"].get("loss", {}).get("steps", [])
        ]


def test_watchers_see_each_metric_and_log_line_once_and_the_end(api: Api) -> None:
    job_id = submit(api)["id"]
    log = api.settings.run_dir(job_id) / LOG_FILE
    log.parent.mkdir(parents=True)
    log.write_text("line 1\nline 2\n")
    with Session(api.engine) as session:
        held = sm.claim(session=session, worker="w")
        assert held is not None
        assert add_metric_points(session=session, claim=held, points=[Point("loss", 1, 1.0, 0.0)], step=1)
    early = Watcher(api, job_id, since=0, log_tail=1)
    assert json.loads(early.wait("job")[0])["status"] == "running"
    assert early.wait("log") == ["line 2\n"]  # the tail asked for
    assert early.steps() == [1]
    with Session(api.engine) as session:
        assert add_metric_points(session=session, claim=held, points=[Point("loss", 2, 0.5, 0.0)], step=2)
    with log.open("a") as file:
        file.write("line 3\n")
    early.wait("metrics", 2)  # how soon: bench/watch.py (a speed target is a benchmark's, not a test's)
    assert early.wait("log", 2) == ["line 2\n", "line 3\n"]
    late = Watcher(api, job_id, since=0)  # joins the feed that is already running
    late.wait("metrics")
    assert len(api.client.app.state.feeds.feeds) == 1  # type: ignore[attr-defined]  # one feed, two watchers
    with Session(api.engine) as session:
        assert add_metric_points(session=session, claim=held, points=[Point("loss", 3, 0.2, 0.0)], step=3)
        assert sm.finish(session=session, claim=held, status=JobStatus.succeeded)
    for watcher in (early, late):
        (end,) = watcher.wait("end")
        assert json.loads(end)["status"] == "succeeded"
        watcher.thread.join(5)
        assert not watcher.thread.is_alive()  # the stream closed at the end
        assert watcher.steps() == [1, 2, 3]  # every point once, the last before the end
    assert [k for k, _ in early.events].count("job") >= 2  # running, then succeeded
    assert api.client.app.state.feeds.feeds == {}  # type: ignore[attr-defined]  # gone with its last watcher


def test_another_owners_job_cannot_be_watched(api: Api) -> None:
    assert api.client.get("/jobs/999/events").status_code == 404
