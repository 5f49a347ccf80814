"""Tenants (issue 10): every route of the app called as Alice, Bob, an admin, with a revoked token and with none;
owners see only their own jobs (others' are 404, never 403); idempotent submits; quotas; tokens.

The API runs with authentication on (Settings(auth="required")) over PostgreSQL and Redis."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session
from starlette.routing import Mount

from api.core import state_machine, tokens
from api.core.db import make_engine
from api.core.models import ApiToken, Checkpoint, Job, JobStatus, MetricPoint, Sweep, Transfer, Webhook
from api.core.settings import Settings
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC

# Routes anyone may call: liveness, Prometheus (counts and job ids only: no names, specs or owners), the
# dashboard's page and files, and the API's own description.
PUBLIC = {"/healthz", "/metrics", "/", "/ui/examples", "/static", "/openapi.json", "/docs", "/redoc"}
PUBLIC |= {"/docs/oauth2-redirect", "/docs-static"}
MOUNTED_FILES = {"/docs-static": "swagger-ui.css"}  # /docs and /redoc's own assets (fastapi-offline)


@dataclass
class Owner:
    name: str
    token: str
    marker: str  # in the owner's job name, log, metric name and weights: must never reach anyone else

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class Tenants:
    client: TestClient
    settings: Settings
    session: Session
    alice: Owner
    bob: Owner
    admin: Owner
    revoked: Owner

    def submit(self, who: Owner, spec: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        body = spec or {**TINY_SPEC, "name": f"job-{who.marker}"}
        response = self.client.post("/jobs", json=body, headers={**who.headers, **headers})
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def fill(self, who: Owner, job_id: int) -> str:
        """A log, a metric series and a checkpoint for the job, each carrying the owner's marker."""
        run_dir = self.settings.run_dir(job_id)
        (run_dir / "checkpoints" / "step-000010").mkdir(parents=True)
        (run_dir / "train.log").write_text(f"step 10 {who.marker}\n")
        (run_dir / "checkpoints" / "step-000010" / "model.safetensors").write_bytes(who.marker.encode() * 4)
        self.session.add(MetricPoint(job_id=job_id, name=f"m_{who.marker}", step=10, value=1.0, time=0.0))
        self.session.add(Checkpoint(job_id=job_id, name="step-000010", step=10, size_bytes=40))
        self.session.commit()
        return "step-000010"


@pytest.fixture
def tenants(api_pg_url: str, redis_url: str, unique_queue: str, tmp_path: Path) -> Iterator[Tenants]:
    settings = Settings(
        home=tmp_path, database_url=api_pg_url, broker_url=redis_url, queue=unique_queue, auth="required"
    )
    settings.resolved_data_dir.mkdir()
    settings.resolved_storage.mkdir()
    engine = make_engine(api_pg_url)
    session = Session(engine)
    session.execute(delete(Sweep))  # other modules' tests empty jobs, not sweeps
    session.commit()

    def owner(name: str, *, admin: bool = False) -> Owner:
        _row, token = tokens.create(session=session, owner=name, is_admin=admin)
        return Owner(name, token, f"{name}secret{uuid.uuid4().hex[:8]}")

    alice, bob, admin, revoked = owner("alice"), owner("bob"), owner("root", admin=True), owner("alice")
    revoked_row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == tokens.hash_token(revoked.token))
    )
    assert revoked_row is not None and tokens.revoke(session=session, token_id=revoked_row.id)
    try:
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            yield Tenants(client, settings, session, alice, bob, admin, revoked)
    finally:
        session.execute(delete(Webhook))
        session.execute(delete(Job))
        session.execute(delete(Sweep))
        session.execute(delete(Transfer))
        session.execute(delete(ApiToken))
        session.commit()
        session.close()
        engine.dispose()


def _calls(tenants: Tenants, values: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """(method, template, concrete path) for every route of the app (included routers flattened): a route
    added later is in the matrix at once."""
    for route in iter_route_contexts(tenants.client.app.routes):  # type: ignore[attr-defined]
        assert route.path is not None
        if isinstance(route.original_route, Mount):  # a file each mount serves: the dashboard's, the docs'
            yield "GET", route.path, f"{route.path}/{MOUNTED_FILES.get(route.path, 'js/api.js')}"
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            yield method, route.path, route.path.format(**{k: values[k] for k in route.param_convertors})


def request(
    client: TestClient, method: str, path: str, body: Any, headers: dict[str, str], params: dict[str, str]
) -> Response:
    """The answer; for an event stream (it lasts as long as the job), its status and first event."""
    if not path.endswith("/events"):
        return client.request(method, path, json=body, headers=headers, params=params)
    with client.stream(method, path, headers=headers) as response:
        first = next(response.iter_raw(), b"") if response.status_code == 200 else response.read()
        return Response(response.status_code, headers=response.headers, content=first)


def test_every_route_for_every_principal(tenants: Tenants) -> None:
    alice_job = tenants.submit(tenants.alice)["id"]
    bob_job = tenants.submit(tenants.bob)["id"]
    tenants.fill(tenants.alice, alice_job)
    checkpoint = tenants.fill(tenants.bob, bob_job)
    sweep = {"base": {**TINY_SPEC, "name": f"sweep-{tenants.bob.marker}"}, "grid": {"train.steps": [10, 20]}}
    bob_sweep = tenants.client.post("/sweeps", json=sweep, headers=tenants.bob.headers).json()["id"]
    (tenants.settings.resolved_data_dir / "weights.npz").write_bytes(b"")  # a source any principal may name
    transfer = {"name": f"transfer-{tenants.bob.marker}", "source": {"weights": "weights.npz"}}
    transfer |= {"base": {"model": TINY_SPEC["model"]}, "datasets": [{"dataset": "digits"}], "few_shot": [1]}
    bob_transfer = tenants.client.post("/transfers", json=transfer, headers=tenants.bob.headers).json()["id"]
    # POST bodies that would be accepted: a refusal is then the principal's, not the body's.
    tenants.settings.webhook_allow = "127.0.0.1/32"
    hook = {"url": "http://127.0.0.1:9/hook"}

    def bob_webhook() -> str:
        return str(tenants.client.post("/webhooks", json=hook, headers=tenants.bob.headers).json()["id"])

    bodies = {
        ("POST", "/jobs"): {**TINY_SPEC, "name": "matrix"},
        ("POST", "/sweeps"): {**sweep, "base": TINY_SPEC},
        ("POST", "/transfers"): {**transfer, "name": "matrix"},
        ("PATCH", "/jobs/{job_id}"): {"notes": "seen"},
        ("POST", "/webhooks"): hook,
    }
    queries = {("GET", "/jobs/{job_id}/logs/search"): {"q": "step"}}  # required query parameters
    bob_hook = bob_webhook()
    values = {"job_id": str(bob_job), "name": checkpoint, "sweep_id": str(bob_sweep), "webhook_id": bob_hook}
    values["transfer_id"] = str(bob_transfer)
    seen: set[str] = set()
    for method, template, path in _calls(tenants, values):
        seen.add(template)
        for who in (None, tenants.revoked, tenants.alice, tenants.admin, tenants.bob):
            target = path
            if template == "/jobs/{job_id}/cancel":  # a fresh queued job of Bob's: cancel works once
                target = path.replace(str(bob_job), str(tenants.submit(tenants.bob)["id"]))
            if method == "DELETE":  # a fresh webhook of Bob's: removing works once
                target = path.replace(bob_hook, bob_webhook())
            body = bodies.get((method, template))
            headers = who.headers if who is not None else {}
            params = queries.get((method, template), {})
            response = request(tenants.client, method, target, body, headers, params)
            label = f"{method} {target} as {who.name if who else 'nobody'}"
            if template in PUBLIC or template.startswith("/static"):
                assert response.status_code in (200, 503), label  # 503: /healthz with no worker running
            elif who is None or who is tenants.revoked:
                assert response.status_code == 401, label
                assert response.headers["www-authenticate"] == "Bearer", label
            elif (
                who is tenants.alice
                and any(k in template for k in ("{job_id}", "{sweep_id}", "{webhook_id}", "{transfer_id}"))
            ) or (
                who is tenants.admin and method == "PATCH"  # notes are their owner's alone
            ):
                assert response.status_code == 404, label
            else:
                assert response.status_code in (200, 201, 202, 204), f"{label}: {response.text[:300]}"
            if who is not tenants.bob and who is not tenants.admin:
                assert tenants.bob.marker.encode() not in response.content, label
            if who is not tenants.alice and who is not tenants.admin:
                assert tenants.alice.marker.encode() not in response.content, label
    # The matrix covered the app's job routes (a route added later lands in it by construction).
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/logs"} <= seen
    assert {"/jobs/{job_id}/logs/lines", "/jobs/{job_id}/logs/search", "/jobs/{job_id}/logs/download"} <= seen
    assert {
        "/jobs/{job_id}/metrics",
        "/jobs/{job_id}/checkpoints",
        "/jobs/{job_id}/checkpoints/{name}",
    } <= seen
    assert {
        "/sweeps",
        "/sweeps/{sweep_id}",
        "/sweeps/{sweep_id}/cancel",
        "/sweeps/{sweep_id}/importance",
    } <= seen
    assert {"/webhooks", "/webhooks/{webhook_id}", "/webhooks/{webhook_id}/deliveries"} <= seen
    assert {"/transfers", "/transfers/{transfer_id}", "/transfers/{transfer_id}/table.csv"} <= seen


def test_lists_and_counts_hold_only_the_owners_jobs(tenants: Tenants) -> None:
    mine = {tenants.submit(tenants.alice)["id"] for _ in range(2)}
    theirs = {tenants.submit(tenants.bob)["id"] for _ in range(3)}
    sweep = {"base": TINY_SPEC, "grid": {"train.steps": [10, 20]}}
    bob_sweep = tenants.client.post("/sweeps", json=sweep, headers=tenants.bob.headers).json()
    assert {child["job"]["owner"] for child in bob_sweep["jobs"]} == {"bob"}
    theirs |= {child["job"]["id"] for child in bob_sweep["jobs"]}
    for who, expected in ((tenants.alice, mine), (tenants.bob, theirs), (tenants.admin, mine | theirs)):
        listed = tenants.client.get("/jobs", headers=who.headers).json()
        assert {job["id"] for job in listed["items"]} == expected
        assert listed["total"] == len(expected)
        sweeps = tenants.client.get("/sweeps", headers=who.headers).json()
        assert sweeps["total"] == (0 if who is tenants.alice else 1)
    queued = tenants.client.get("/jobs?status=queued&limit=1", headers=tenants.alice.headers).json()
    assert queued["total"] == 2 and len(queued["items"]) == 1


def test_owner_and_canceller_are_recorded(tenants: Tenants) -> None:
    job = tenants.submit(tenants.bob)
    assert job["owner"] == "bob" and job["cancelled_by"] is None
    cancelled = tenants.client.post(f"/jobs/{job['id']}/cancel", headers=tenants.admin.headers).json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] == "root"
    assert (
        tenants.client.get(f"/jobs/{job['id']}", headers=tenants.bob.headers).json()["cancelled_by"] == "root"
    )


def test_another_owners_run_is_no_source_for_a_fine_tune(tenants: Tenants) -> None:
    bob_job = tenants.submit(tenants.bob)["id"]
    tenants.fill(tenants.bob, bob_job)
    run_dir = f"{tenants.settings.resolved_storage}/jobs/{bob_job}"
    finetune = {**TINY_SPEC, "kind": "finetune", "name": "steal"}
    for init in ({"from_job": bob_job}, {"weights": run_dir}, {"weights": f"../storage/jobs/{bob_job}"}):
        as_alice = tenants.client.post(
            "/jobs", json={**finetune, "init": init}, headers=tenants.alice.headers
        )
        assert as_alice.status_code == 422, (init, as_alice.text)
        assert as_alice.json()["detail"][0]["type"] in ("job_not_found", "weights_not_found")
        assert tenants.bob.marker not in as_alice.text
        for allowed in (tenants.bob, tenants.admin):
            response = tenants.client.post("/jobs", json={**finetune, "init": init}, headers=allowed.headers)
            assert response.status_code == 201, (init, allowed.name, response.text)
    # The answer is the same as for a run that does not exist: Alice learns nothing about job ids.
    missing = {**finetune, "init": {"weights": f"{tenants.settings.resolved_storage}/jobs/999999"}}
    answer = tenants.client.post("/jobs", json=missing, headers=tenants.alice.headers).json()
    assert answer["detail"][0]["type"] == "weights_not_found"


def test_another_owners_run_is_no_source_for_a_transfer(tenants: Tenants) -> None:
    bob_job = tenants.submit(tenants.bob)["id"]
    tenants.fill(tenants.bob, bob_job)
    run_dir = f"{tenants.settings.resolved_storage}/jobs/{bob_job}"
    for source, loc in (({"from_job": bob_job}, "from_job"), ({"weights": run_dir}, "weights")):
        transfer = {"source": source, "datasets": [{"dataset": "digits"}], "few_shot": [1]}
        as_alice = tenants.client.post("/transfers", json=transfer, headers=tenants.alice.headers)
        assert as_alice.status_code == 422, (source, as_alice.text)
        assert as_alice.json()["detail"][0]["loc"] == ["body", "source", loc]
        assert tenants.bob.marker not in as_alice.text
        as_bob = tenants.client.post("/transfers", json=transfer, headers=tenants.bob.headers)
        assert as_bob.status_code == 201, as_bob.text
    listed = {
        who.name: tenants.client.get("/transfers", headers=who.headers).json()["total"]
        for who in (tenants.alice, tenants.bob, tenants.admin)
    }
    assert listed == {"alice": 0, "bob": 2, "root": 2}
    assert tenants.session.query(Job).filter(Job.owner == "alice").count() == 0


def test_idempotency_key_replays_the_first_job(tenants: Tenants) -> None:
    key = {"idempotency-key": str(uuid.uuid4())}
    first = tenants.submit(tenants.alice, **key)
    again = tenants.client.post(
        "/jobs",
        json={**TINY_SPEC, "name": f"job-{tenants.alice.marker}"},
        headers={**tenants.alice.headers, **key},
    )
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    changed = tenants.client.post(
        "/jobs", json={**TINY_SPEC, "name": "other"}, headers={**tenants.alice.headers, **key}
    )
    assert changed.status_code == 422 and changed.json()["detail"][0]["type"] == "idempotency_key_reused"
    # Keys are per owner: Bob's same key is a job of his own.
    assert tenants.submit(tenants.bob, **key)["id"] != first["id"]
    assert tenants.session.scalar(select(text("count(*)")).select_from(Job)) == 2


@pytest.mark.parametrize(
    ("setting", "spec_change", "limit"),
    [
        ({"max_gpus": 1}, {"resources": {"procs_per_node": 2, "device": "cuda"}}, "max_gpus"),
    ],
)
def test_hard_quotas_refuse_with_429(
    tenants: Tenants, setting: dict[str, int], spec_change: dict[str, Any], limit: str
) -> None:
    tenants.client.app.state.settings = tenants.settings.model_copy(update=setting)  # type: ignore[attr-defined]
    response = tenants.client.post("/jobs", json={**TINY_SPEC, **spec_change}, headers=tenants.alice.headers)
    assert response.status_code == 429 and limit in response.json()["detail"], response.text
    small = {**TINY_SPEC, "train": {"steps": 2, "batch_size": 2}}
    assert tenants.client.post("/jobs", json=small, headers=tenants.alice.headers).status_code == 201


def test_queued_quota_counts_per_owner(tenants: Tenants) -> None:
    tenants.client.app.state.settings = tenants.settings.model_copy(update={"max_queued_jobs": 2})  # type: ignore[attr-defined]
    tenants.submit(tenants.alice)
    tenants.submit(tenants.alice)
    refused = tenants.client.post("/jobs", json=TINY_SPEC, headers=tenants.alice.headers)
    assert refused.status_code == 429 and "max_queued_jobs" in refused.json()["detail"]
    tenants.submit(tenants.bob)  # Bob's quota is his own
    sweep = {"base": TINY_SPEC, "grid": {"train.steps": [10, 20]}}  # two jobs: one more than Bob has left
    refused = tenants.client.post("/sweeps", json=sweep, headers=tenants.bob.headers)
    assert refused.status_code == 429 and "max_queued_jobs" in refused.json()["detail"]


def test_running_limit_makes_jobs_wait_not_fail(tenants: Tenants) -> None:
    """max_running_jobs delays: the claim skips an owner at it, and the job says why it waits."""
    tenants.client.app.state.settings = tenants.settings.model_copy(update={"max_running_jobs": 1})  # type: ignore[attr-defined]
    first, second = tenants.submit(tenants.alice)["id"], tenants.submit(tenants.alice)["id"]
    bobs = tenants.submit(tenants.bob)["id"]

    def claim() -> state_machine.Claim | None:
        return state_machine.claim(session=tenants.session, worker="w", running_limit=1)

    won = claim()
    assert won is not None and won.job_id == first
    won_next = claim()
    assert won_next is not None and won_next.job_id == bobs  # Alice's second job is skipped, not failed
    assert claim() is None
    waiting = tenants.client.get(f"/jobs/{second}", headers=tenants.alice.headers).json()
    assert waiting["status"] == "queued" and "max_running_jobs" in waiting["wait_reason"]
    assert state_machine.finish(session=tenants.session, claim=won, status=JobStatus.succeeded)
    last = claim()
    assert last is not None and last.job_id == second


def test_tokens_are_random_hashed_and_never_logged(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    made = [tokens.create(session=tenants.session, owner="carol")[1] for _ in range(3)]
    assert len(set(made)) == 3
    assert all(len(t) >= 43 + len(tokens.PREFIX) for t in made)  # 32 random bytes, base64url: 43 characters
    rows = tenants.session.scalars(select(ApiToken).where(ApiToken.owner == "carol")).all()
    assert {r.token_hash for r in rows} == {hashlib.sha256(t.encode()).hexdigest() for t in made}
    dump = "\n".join(str(tuple(r)) for r in tenants.session.execute(text("SELECT * FROM api_tokens")))
    assert not any(t in dump or t.removeprefix(tokens.PREFIX) in dump for t in made)
    caplog.set_level(logging.DEBUG)
    headers = {"authorization": f"Bearer {made[0]}"}
    tenants.client.post("/jobs", json=TINY_SPEC, headers=headers)
    tenants.client.get("/jobs", headers=headers)
    tenants.client.get("/jobs", headers={"authorization": "Bearer vitq_wrong"})
    assert caplog.records and not any(made[0] in r.getMessage() for r in caplog.records)


def test_revocation_takes_effect_on_the_next_request(tenants: Tenants) -> None:
    row, token = tokens.create(session=tenants.session, owner="dave")
    headers = {"authorization": f"Bearer {token}"}
    assert tenants.client.get("/jobs", headers=headers).status_code == 200
    assert tokens.revoke(session=tenants.session, token_id=row.id)
    response = tenants.client.get("/jobs", headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert tenants.client.post("/jobs", json=TINY_SPEC, headers=headers).status_code == 401


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "vitq_token"])
def test_malformed_authorization_is_401(tenants: Tenants, header: str) -> None:
    response = tenants.client.get("/jobs", headers={"authorization": header})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_the_bootstrap_admin_token_is_stored_hashed_once(tenants: Tenants) -> None:
    """docker compose's first admin: VITQ_BOOTSTRAP_ADMIN_TOKEN, stored at API start unless already there."""
    token = secrets.token_hex(32)
    settings = tenants.settings.model_copy(update={"bootstrap_admin_token": SecretStr(token)})
    for _ in range(2):  # a restart finds it stored
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            listed = client.get("/jobs", headers={"authorization": f"Bearer {token}"})
            assert listed.status_code == 200
    rows = tenants.session.scalars(
        select(ApiToken).where(ApiToken.token_hash == tokens.hash_token(token))
    ).all()
    assert len(rows) == 1 and rows[0].is_admin
    short = tenants.settings.model_copy(update={"bootstrap_admin_token": SecretStr("too-short")})
    with (
        pytest.raises(ValueError, match="shorter than 32"),
        TestClient(create_app(short), base_url="http://localhost"),
    ):
        pass


def test_racing_claims_never_pass_the_running_limit(tenants: Tenants) -> None:
    """Claims of one owner take its lock: a claim made while another claim of the same owner has updated its job
    but not committed yet waits for that commit, then sees the slot taken (without the lock both would win)."""
    first, second = tenants.submit(tenants.alice)["id"], tenants.submit(tenants.alice)["id"]
    engine = tenants.session.get_bind()
    with Session(engine) as in_flight:  # the first claim, stopped between its UPDATE and its commit
        state_machine.lock_owner(session=in_flight, owner="alice")
        # It holds the later job: the racing claim's first candidate is free of row locks.
        in_flight.execute(update(Job).where(Job.id == second).values(status=JobStatus.running, worker="w1"))
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(_claim_in_own_session, engine, "w2")
            time.sleep(1.0)  # the racing claim is now waiting on the lock (or, without it, already done)
            in_flight.commit()
            won = racing.result(timeout=30)
    assert won is None, f"claimed job {won.job_id} past the running limit"
    with Session(engine) as session:
        assert session.scalar(select(Job.status).where(Job.id == first)) == JobStatus.queued


def _claim_in_own_session(engine: Any, worker: str) -> state_machine.Claim | None:
    with Session(engine) as session:
        return state_machine.claim(session=session, worker=worker, running_limit=1)
