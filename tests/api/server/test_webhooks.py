"""Webhooks against a real HTTP receiver started by the test: a job's or sweep's end posted once as Slack-compatible
JSON, a failing receiver retried with backoff, and addresses the server may not call refused (at registration and
before each attempt). The dispatcher's passes are run here as the worker's thread runs them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from api.core import notify
from api.core.models import Job, JobStatus, WebhookDelivery
from api.core.state_machine import now
from tests.api.conftest import TINY_SPEC, Api, submit

LOOPBACK = "127.0.0.1/32"


class Receiver:
    """An HTTP server on loopback that records each POST's JSON and answers with the next of `codes` (then 200)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.codes: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append(json.loads(body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running
    running.server.shutdown()


@pytest.fixture
def hooks(api: Api, receiver: Receiver) -> Receiver:
    api.settings.webhook_allow = LOOPBACK  # the receiver is on loopback: this server allows it
    receiver.posts.clear()
    receiver.codes.clear()
    return receiver


def register(api: Api, status: int = 201, **body: Any) -> dict[str, Any]:
    response = api.client.post("/webhooks", json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def dispatch(api: Api, allow: str = LOOPBACK) -> None:
    """One pass of worker/notifier.py's thread."""
    with api.session() as session, httpx.Client() as client:
        notify.make_deliveries(session=session)
        notify.deliver_due(session=session, allow=notify.allowed_networks(allow), client=client)


def end(api: Api, job_id: int, status: JobStatus = JobStatus.succeeded) -> None:
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, step=40, finished_at=now()))
        session.commit()


def deliveries(api: Api, hook_id: int) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = api.client.get(f"/webhooks/{hook_id}/deliveries").json()
    return answer


def test_a_jobs_end_is_posted_once_to_each_webhook_that_wants_it(api: Api, hooks: Receiver) -> None:
    everything = register(api, url=hooks.url)
    job = submit(api)
    other = submit(api)
    only_this = register(api, url=hooks.url + "?one", job_id=job["id"])
    dispatch(api)
    assert hooks.posts == []  # nothing ended yet
    end(api, job["id"])
    dispatch(api)
    dispatch(api)  # a second pass sends nothing again
    assert len(hooks.posts) == 2
    post = hooks.posts[0]
    assert post["text"] == f"vitq: job {job['id']} (tiny) succeeded at step 40 of 40"  # Slack shows `text`
    assert (post["event"], post["job"]["id"], post["job"]["status"]) == ("job.ended", job["id"], "succeeded")
    [delivered] = deliveries(api, only_this["id"])
    assert (delivered["state"], delivered["attempts"], delivered["last_code"]) == ("delivered", 1, 200)
    assert len(deliveries(api, everything["id"])) == 1
    end(api, other["id"], JobStatus.pruned)
    dispatch(api)
    assert [p["job"]["id"] for p in hooks.posts[2:]] == [other["id"]]  # the owner-wide one only
    assert "pruned" in hooks.posts[2]["text"]
    assert [h["id"] for h in api.client.get("/webhooks").json()] == [everything["id"], only_this["id"]]
    assert api.client.delete(f"/webhooks/{only_this['id']}").status_code == 204
    assert api.client.get(f"/webhooks/{only_this['id']}/deliveries").status_code == 404


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(api: Api, hooks: Receiver) -> None:
    hook = register(api, url=hooks.url)
    hooks.codes = [500, 503]
    end(api, submit(api)["id"], JobStatus.failed)
    before = now()
    dispatch(api)
    after = now()
    [first] = deliveries(api, hook["id"])
    assert (first["state"], first["attempts"], first["last_code"]) == ("pending", 1, 500)
    dispatch(api)
    assert len(hooks.posts) == 1  # not due yet: the next try waits BACKOFF_FIRST_S
    with api.session() as session:
        due = session.get(WebhookDelivery, first["id"])
        assert due is not None
        next_at = due.next_at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        assert before + timedelta(seconds=notify.BACKOFF_FIRST_S) <= next_at <= after + timedelta(seconds=1)
        for _ in range(2):
            session.execute(update(WebhookDelivery).values(next_at=now()))
            session.commit()
            dispatch(api)
    [done] = deliveries(api, hook["id"])
    assert (done["state"], done["attempts"], done["last_code"], done["last_error"]) == (
        "delivered",
        3,
        200,
        None,
    )
    assert len(hooks.posts) == 3
    assert [notify.backoff(n) for n in (1, 2, 3, 12)] == [1.0, 2.0, 4.0, notify.BACKOFF_MAX_S]


def test_addresses_the_server_may_not_call_are_refused(api: Api, hooks: Receiver) -> None:
    api.settings.webhook_allow = None
    for url, words in [
        (hooks.url, "127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("ftp://example.com/x", "not an http(s) URL"),
    ]:
        detail = register(api, 422, url=url)["detail"][0]
        assert detail["loc"] == ["body", "url"] and words in detail["msg"], detail
    assert register(api, 422, url=hooks.url, job_id=2**31 - 1)["detail"][0]["loc"] == ["body", "url"]
    api.settings.webhook_allow = LOOPBACK
    assert (
        register(api, 422, url=hooks.url, job_id=2**31 - 1)["detail"][0]["msg"]
        == f"job {2**31 - 1} does not exist"
    )
    # Allowed when registered, no longer when sent: the attempt is refused, and nothing reaches the receiver.
    hook = register(api, url=hooks.url)
    end(api, submit(api)["id"])
    dispatch(api, allow="")
    [refused] = deliveries(api, hook["id"])
    assert refused["state"] == "failed" and "loopback" in refused["last_error"], refused
    assert hooks.posts == []


def test_a_sweeps_end_is_posted_when_its_last_child_ends(api: Api, hooks: Receiver) -> None:
    sweep = api.client.post("/sweeps", json={"base": TINY_SPEC, "grid": {"optim.lr": [1e-3, 2e-3]}}).json()
    hook = register(api, url=hooks.url, sweep_id=sweep["id"])
    first, second = (c["job"]["id"] for c in sweep["jobs"])
    end(api, first)
    dispatch(api)
    assert hooks.posts == []  # the sweep's webhook hears of the sweep, not of each job
    end(api, second, JobStatus.cancelled)
    dispatch(api)
    [post] = hooks.posts
    assert post["text"] == f"vitq: sweep {sweep['id']} (tiny) ended: 1 cancelled, 1 succeeded"
    assert post["sweep"]["jobs"] == {"succeeded": 1, "cancelled": 1}
    assert deliveries(api, hook["id"])[0]["state"] == "delivered"
