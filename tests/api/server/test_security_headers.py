"""Every answer carries the headers that keep other origins off the dashboard's origin; /docs and /redoc load
their scripts from this server, never a CDN."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import Api


@pytest.mark.parametrize(
    "path", ["/", "/jobs", "/docs", "/redoc", "/openapi.json", "/static/js/app.js", "/nope"]
)
def test_every_answer_forbids_framing_sniffing_and_foreign_scripts(api: Api, path: str) -> None:
    headers = api.client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'self'"
    inline = " 'unsafe-inline'" if path == "/docs" else ""  # Swagger UI's own start-up script, nowhere else
    assert policy["script-src"] == "'self'" + inline


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_assets_are_served_from_the_package(api: Api, path: str) -> None:
    page = api.client.get(path).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "https://" not in page.split("</head>")[0] + "".join(assets)
    for asset in assets:
        if asset.endswith((".js", ".css", ".png")):
            answer = api.client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 1000, asset
