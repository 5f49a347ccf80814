"""Cross-site requests and foreign Host names (api/server/request_guard.py), over a real HTTP server with
authentication off (what `vitq serve` runs on 127.0.0.1): what a page on another origin can make a browser send
is refused and stores nothing; the dashboard's and the CLI's own requests still work."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from api.cli.tokens import serve_settings
from api.client import VitqClient
from api.core.migrate import upgrade
from api.core.settings import Settings
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC

SPEC_YAML = yaml.safe_dump(TINY_SPEC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("guard")
    settings, _ = serve_settings(Settings(home=home), host="127.0.0.1", insecure=False)
    assert not settings.auth_required
    upgrade(settings.resolved_database_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def job_count(url: str) -> int:
    total: int = httpx.get(f"{url}/jobs").json()["total"]
    return total


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        # An HTML form on evil.example, enctype=text/plain, the YAML packed into the field name.
        ({"origin": "http://evil.example", "content-type": "text/plain"}, SPEC_YAML + "=", 403),
        # The same form with no Origin (an old browser, a stripped header): its content type alone is refused.
        ({"content-type": "text/plain"}, SPEC_YAML + "=", 415),
        ({"content-type": "application/x-www-form-urlencoded"}, "a=1", 415),
        ({"content-type": "multipart/form-data; boundary=x"}, "--x--", 415),
        # fetch() from another origin, or from a sandboxed frame; another port of this machine is another origin.
        ({"origin": "http://evil.example", "content-type": "application/yaml"}, SPEC_YAML, 403),
        ({"origin": "null", "content-type": "application/yaml"}, SPEC_YAML, 403),
        ({"origin": "http://127.0.0.1:1", "content-type": "application/yaml"}, SPEC_YAML, 403),
        ({"sec-fetch-site": "cross-site", "content-type": "application/yaml"}, SPEC_YAML, 403),
        # DNS rebinding: evil.example re-pointed at 127.0.0.1, so the page is "same-origin" with itself.
        ({"host": "evil.example", "content-type": "application/yaml"}, SPEC_YAML, 400),
    ],
    ids=["form-text-plain", "form-no-origin", "form-urlencoded", "form-multipart", "fetch-cross-origin",
         "null-origin", "other-port", "sec-fetch-cross-site", "rebound-host"],
)  # fmt: skip
def test_cross_site_submits_are_refused_and_store_nothing(
    server: str, headers: dict[str, str], body: str, status: int
) -> None:
    before = job_count(server)
    answer = httpx.post(f"{server}/jobs", content=body.encode(), headers=headers)
    assert answer.status_code == status, answer.text
    assert job_count(server) == before


def test_cross_site_cancel_and_rebound_reads_are_refused(server: str) -> None:
    with VitqClient(server) as client:  # the CLI's client: no Origin, a YAML content type
        job = client.submit(SPEC_YAML)
    cancel = f"{server}/jobs/{job['id']}/cancel"
    empty_form = {"origin": "http://evil.example", "content-type": "application/x-www-form-urlencoded"}
    assert httpx.post(cancel, headers=empty_form).status_code == 403
    assert (
        httpx.post(cancel, headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    )
    assert httpx.get(f"{server}/jobs/{job['id']}").json()["status"] == "queued"
    rebound = httpx.get(f"{server}/jobs", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 400
    assert "evil.example" in rebound.json()["detail"] and "VITQ_ALLOWED_HOSTS" in rebound.json()["detail"]
    # The dashboard's own cancel: same origin, no content type.
    origin = {"origin": server, "sec-fetch-site": "same-origin"}
    assert httpx.post(cancel, headers=origin).json()["status"] == "cancelled"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_the_dashboards_submit_works_under_each_loopback_name(server: str, host: str) -> None:
    port = server.rsplit(":", 1)[1]
    headers = {
        "host": f"{host}:{port}",
        "origin": f"http://{host}:{port}",
        "sec-fetch-site": "same-origin",
        "content-type": "application/yaml",
    }
    assert httpx.post(f"{server}/jobs", content=SPEC_YAML.encode(), headers=headers).status_code == 201


def test_named_hosts_and_origins_are_served(tmp_path: Path) -> None:
    """An operator's host name (VITQ_ALLOWED_HOSTS, or the address `vitq serve --host` binds) and an origin
    behind a proxy that rewrites Host (VITQ_ALLOWED_ORIGINS)."""
    from fastapi.testclient import TestClient

    settings = Settings(
        home=tmp_path, auth="off", allowed_hosts="vitq.lab", allowed_origins="https://vitq.lab/"
    )
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings), base_url="http://vitq.lab") as client:
        assert client.get("/jobs").status_code == 200
        assert client.get("/jobs", headers={"host": "localhost"}).status_code == 400
        proxied = {"host": "vitq.lab", "origin": "https://vitq.lab", "content-type": "application/yaml"}
        assert client.post("/jobs", content=SPEC_YAML.encode(), headers=proxied).status_code == 201
    served, _ = serve_settings(Settings(home=tmp_path), host="10.1.2.3", insecure=False)
    assert "10.1.2.3" in served.allowed_host_names
