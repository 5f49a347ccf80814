"""GET /healthz: 200 when the database and the broker answer, 503 naming the part that does not."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.core import workers
from api.core.db import session_scope
from api.server.app import create_app
from tests.api.conftest import Api


def test_healthy(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200, response.text
    assert {part: response.json()[part] for part in ("database", "broker")} == {
        "database": "ok",
        "broker": "ok",
    }


def test_no_live_worker_while_jobs_wait_is_503_and_a_heartbeat_makes_it_healthy(api: Api) -> None:
    api.client.post("/jobs", json={"kind": "pretrain", "train": {"steps": 10}})
    response = api.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["workers"].startswith("down: no live worker while ")
    assert response.json()["live_workers"] == []
    with session_scope(api.settings.resolved_database_url) as session:
        workers.announce(session=session, name="host-a:7", host="host-a", pid=7)
    response = api.client.get("/healthz")
    assert response.status_code == 200, response.text
    assert (response.json()["workers"], response.json()["live_workers"]) == ("ok", ["host-a:7"])
    with session_scope(api.settings.resolved_database_url) as session:
        workers.retire(session=session, name="host-a:7")  # a clean shutdown counts at once
    assert api.client.get("/healthz").status_code == 503


def test_broker_down_is_503(api: Api) -> None:
    down = api.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), base_url="http://localhost") as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert response.json()["broker"].startswith("down:")
    assert "127.0.0.1:1" in response.json()["broker"]


def test_database_down_is_503(api: Api) -> None:
    down = api.settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    with TestClient(create_app(down), base_url="http://localhost") as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"].startswith("down:")
    assert response.json()["broker"] == "ok"


def test_openapi_documents_the_routes(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/metrics", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert "optim" in schema["components"]["schemas"]["JobSpec"]["properties"]
    assert api.client.get("/docs").status_code == 200
