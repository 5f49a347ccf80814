"""GET /healthz: 200 when the database and the broker answer, 503 naming the part that does not."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app

from .conftest import Api


def test_healthy(api: Api) -> None:
    response = api.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"database": "ok", "broker": "ok"})


def test_broker_down_is_503(api: Api) -> None:
    down = api.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert response.json()["broker"].startswith("down:")
    assert "127.0.0.1:1" in response.json()["broker"]


def test_database_down_is_503(api: Api) -> None:
    down = api.settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    with TestClient(create_app(down)) as client:
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
