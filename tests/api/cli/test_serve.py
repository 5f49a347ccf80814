"""`vitq serve` never leaves its worker behind: not when stopped with SIGTERM, not when killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.api.cli.service import VITQ, free_port, service_env, wait_for, wait_healthy
from worker.launch import descendants


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_serve_stops_its_worker(tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [VITQ, "serve", "--port", str(port), "--log-level", "warning"],
            env=service_env(tmp_path / "home", url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = None
    try:
        wait_healthy(url, serve, log_path)
        [worker] = wait_for(lambda: descendants(serve.pid), timeout=30)
        serve.send_signal(signum)
        serve.wait(30)
        wait_for(lambda: not alive(worker), timeout=30)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_serve_restarts_a_worker_that_dies_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [VITQ, "serve", "--port", str(port), "--log-level", "warning"],
            env=service_env(tmp_path / "home", url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, serve, log_path)
        [first] = wait_for(lambda: descendants(serve.pid), timeout=30)
        os.kill(first, signal.SIGKILL)  # an OOM kill, a crash: serve is still up
        [second] = wait_for(
            lambda: [p for p in descendants(serve.pid) if p != first and alive(p)], timeout=30
        )
        assert second != first
        assert "the worker exited with code -9; restarting it" in log_path.read_text()
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()
