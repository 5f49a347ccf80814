"""VITQ_LOG_FORMAT=json: JSON lines from real processes, with job_id on every line about a job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

SCRIPT = textwrap.dedent(
    """
    import logging, threading, contextvars
    from api.core.logging_setup import configure_logging, job_context, job_logger
    configure_logging("INFO")
    log = logging.getLogger("vitq.test")
    log.info("about no job")
    with job_context(7):
        log.info("inside the job context")
        thread = threading.Thread(target=contextvars.copy_context().run, args=(log.warning, "from a thread"))
        thread.start(); thread.join()
    job_logger(log, 8).info("through the adapter")
    log.error("with extra", extra={"job_id": 9})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("failed", extra={"job_id": 10})
    """
)


def run(log_format: str) -> list[str]:
    env = {**os.environ, "VITQ_LOG_FORMAT": log_format}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return done.stderr.splitlines()


def test_json_lines_carry_the_job_id() -> None:
    lines = [json.loads(line) for line in run("json") if not line.startswith(" ")]
    by_message = {line["message"]: line for line in lines}
    assert "job_id" not in by_message["about no job"]
    assert by_message["inside the job context"]["job_id"] == 7
    assert by_message["from a thread"]["job_id"] == 7
    assert by_message["through the adapter"]["job_id"] == 8
    assert by_message["with extra"]["job_id"] == 9
    assert by_message["failed"]["job_id"] == 10
    assert "ZeroDivisionError" in by_message["failed"]["exception"]
    assert {line["level"] for line in lines} == {"INFO", "WARNING", "ERROR"}


def test_text_lines_name_the_job() -> None:
    lines = run("text")
    assert any(line.endswith("vitq.test: about no job") for line in lines)
    assert any(line.endswith("vitq.test: [job 8] through the adapter") for line in lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_logs_json_lines_uvicorn_included(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "VITQ_HOME": str(tmp_path), "VITQ_LOG_FORMAT": "json"}
    for key in ("VITQ_DATABASE_URL", "VITQ_BROKER_URL", "VITQ_STORAGE", "VITQ_DATA_DIR"):
        env.pop(key, None)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                assert serve.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(0.2)
    finally:
        serve.terminate()
        serve.wait(30)
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.access" in loggers and "uvicorn.error" in loggers, loggers
    assert any("GET /jobs" in line["message"] for line in lines if line["logger"] == "uvicorn.access")
