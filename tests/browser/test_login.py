"""The dashboard against a server that requires tokens: it asks for one on the first 401, keeps it in the
browser, and then shows only that owner's jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from api.core import tokens
from api.core.db import make_engine
from api.core.migrate import upgrade
from api.core.settings import Settings
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The API with authentication on (SQLite, embedded broker, no worker): its URL and a token per owner, each
    owner with one queued job named after them."""
    settings = Settings(home=tmp_path, auth="required")
    for directory in (settings.resolved_storage, settings.resolved_data_dir):
        directory.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        owned = {owner: tokens.create(session=session, owner=owner)[1] for owner in ("alice", "bob")}
    engine.dispose()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    for owner, token in owned.items():
        spec = {**TINY_SPEC, "name": f"{owner}-job"}
        httpx.post(f"{url}/jobs", json=spec, headers={"authorization": f"Bearer {token}"}).raise_for_status()
    try:
        yield url, owned
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_dashboard_asks_for_a_token_once_and_shows_only_the_owners_jobs(
    page: Page, server: tuple[str, dict[str, str]]
) -> None:
    url, owned = server
    page.goto(f"{url}/")
    bar = page.locator("#token-bar")
    expect(bar).to_be_visible()
    expect(page.get_by_text("alice-job")).to_have_count(0)
    bar.get_by_label("API token").fill(owned["alice"])
    bar.get_by_role("button", name="Save").click()
    expect(page.get_by_text("alice-job").first).to_be_visible()
    expect(page.locator("#token-bar")).to_have_count(0)
    expect(page.get_by_text("bob-job")).to_have_count(0)
    page.reload()  # kept in the browser: not asked again
    expect(page.get_by_text("alice-job").first).to_be_visible()
    expect(page.locator("#token-bar")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('vitq-token')") == owned["alice"]
