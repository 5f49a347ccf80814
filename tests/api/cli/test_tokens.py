"""Tokens from a terminal: `vitq token create|list|revoke` against the configured database, `vitq login`, and
whether `vitq serve` requires tokens (loopback without, any other address with, unless told it is insecure).
Real `vitq` processes, an API without a worker."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.cli.service import VITQ, free_port, service_env, wait_for


def vitq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VITQ, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[tuple[str, Path]]:
    """`vitq serve --no-worker ARGS` on a free port; its URL (always reached over 127.0.0.1) and its log."""
    port = free_port()
    log = Path(env["VITQ_HOME"]) / f"serve-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [VITQ, "serve", "--no-worker", "--port", str(port), "--log-level", "warning", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url, process), timeout=60)
        yield url, log
    finally:
        process.terminate()
        process.wait(30)


def _up(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "vitq serve exited"
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = service_env(tmp_path / "home", "http://unused")  # no VITQ_* from the test run: the defaults
    environment["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    (tmp_path / "home").mkdir()
    return environment


def test_create_list_revoke(env: dict[str, str]) -> None:
    made = vitq(env, "token", "create", "--owner", "alice")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]  # printed once, as the last line
    assert token.startswith("vitq_") and len(token) >= 48
    admin = vitq(env, "token", "create", "--owner", "root", "--admin").stdout.strip().splitlines()[-1]
    listed = vitq(env, "token", "list")
    assert token not in listed.stdout and admin not in listed.stdout  # never shown again
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [("1", "alice", "user"), ("2", "root", "admin")]
    assert vitq(env, "token", "revoke", "1").stdout.strip() == "token 1 revoked"
    again = vitq(env, "token", "revoke", "1")
    assert again.returncode == 2 and "no live token 1" in again.stderr
    assert vitq(env, "token", "list").stdout.splitlines()[1].split()[-1] != "-"  # a revocation time
    assert vitq(env, "token", "create", "--owner", "x" * 65).returncode == 2


def test_serve_elsewhere_than_loopback_requires_tokens_and_login_keeps_one(env: dict[str, str]) -> None:
    token = vitq(env, "token", "create", "--owner", "alice").stdout.strip().splitlines()[-1]
    with serving(env, "--host", "0.0.0.0") as (url, log):
        assert "authentication required" in log.read_text()
        env["VITQ_URL"] = url
        assert httpx.get(f"{url}/jobs").status_code == 401
        refused = vitq(env, "ls")
        assert refused.returncode == 2 and "authentication required" in refused.stderr
        assert vitq({**env, "VITQ_TOKEN": token}, "ls").returncode == 0
        assert vitq(env, "login", "--token", "vitq_not-a-token").returncode == 2  # checked before saving
        saved = Path(env["XDG_CONFIG_HOME"]) / "vitq" / "token"
        assert not saved.exists()
        logged_in = vitq(env, "login", "--token", token)
        assert logged_in.returncode == 0, logged_in.stderr
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
        listing = vitq(env, "ls")  # no VITQ_TOKEN: the saved one
        assert listing.returncode == 0, listing.stderr
        assert token not in log.read_text()  # never logged, not even in access lines


def test_serve_on_loopback_runs_without_auth_and_says_so(env: dict[str, str]) -> None:
    with serving(env, "--host", "127.0.0.1") as (url, log):
        assert "authentication is off" in log.read_text()
        assert httpx.get(f"{url}/jobs").status_code == 200


def test_serve_insecure_elsewhere_warns(env: dict[str, str]) -> None:
    with serving(env, "--host", "0.0.0.0", "--insecure") as (url, log):
        assert "WARNING: authentication is off on 0.0.0.0 (--insecure)" in log.read_text()
        assert httpx.get(f"{url}/jobs").status_code == 200
    with serving({**env, "VITQ_AUTH": "required"}, "--host", "127.0.0.1") as (url, _log):
        assert httpx.get(f"{url}/jobs").status_code == 401  # asked for explicitly, even on loopback
