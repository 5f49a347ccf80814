"""Installing vitq without extras, into a fresh virtual environment (no system site-packages, pip's resolution),
gives a worker that starts against Redis and against the embedded broker, and an embedded service that trains a
job: a runtime dependency that only the dev extras brought in fails here.

The processes run outside the checkout, so they import the installed package, never the source folders."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.cli.service import free_port, tiny_spec

CHECKOUT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")
INSTALL_TIMEOUT_S = 1800  # the first run unpacks the CUDA torch (5 GB) into uv's cache; later runs link it
READY_TIMEOUT_S = 90
FINISHED = ("succeeded", "failed", "cancelled")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with `vitq` installed, non-editable and without extras: exactly
    the dependencies a user gets. uv resolves them as pip does (it reads no pip.conf, so pip's configured sources
    are passed on) and links the unpacked CUDA torch from its cache instead of copying 5 GB each run."""
    root = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(root)], check=True)
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "-q",
            "--python",
            str(root / "bin" / "python"),
            *pip_sources(),
            str(CHECKOUT),
        ],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
        cwd=root,
    )
    return root


def pip_sources() -> list[str]:
    """pip's configured indexes, find-links and constraints as uv options, chosen across indexes by best version
    as pip does (uv's unsafe-best-match)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    options = ["--no-config", "--index-strategy", "unsafe-best-match"]
    flags = {
        "index-url": "--index-url",
        "extra-index-url": "--extra-index-url",
        "find-links": "--find-links",
        "constraint": "--constraint",
    }
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        flag = flags.get(key.rsplit(".", 1)[-1])
        if flag is not None:
            for item in value.strip("'\"").split():
                options += [flag, item]
    return options


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITQ_", "PYTHON"))}
    env.update(VITQ_HOME=str(home), OMP_NUM_THREADS="1", **settings)
    return env


def test_installed_from_the_venv_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import api, worker, vit, celery, torch; print(api.__file__)"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where


def wait_for_ready(worker: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        text = log.read_text(errors="replace")
        if " ready." in text:
            return text
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{text[-4000:]}"
        assert time.monotonic() < deadline, f"no 'ready' within {READY_TIMEOUT_S} s:\n{text[-4000:]}"
        time.sleep(0.5)


@contextmanager
def running(venv: Path, args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the installed package, run outside the checkout and stopped (SIGTERM) afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / args[0]), *args[1:]], cwd=log.parent, env=env, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def migrate(venv: Path, env: dict[str, str], cwd: Path) -> None:
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "api.core.migrate"], cwd=cwd, env=env, check=True, capture_output=True)


def test_worker_connects_to_redis(venv: Path, tmp_path: Path, redis_url: str) -> None:
    queue = f"vitq-install-{uuid.uuid4().hex[:10]}"
    env = clean_env(tmp_path, VITQ_BROKER_URL=redis_url, VITQ_QUEUE=queue)
    migrate(venv, env, tmp_path)
    log = tmp_path / "worker.log"
    with running(venv, ["python", "-m", "worker"], env, log) as worker:
        text = wait_for_ready(worker, log)
    assert "redis://" in text, text[-2000:]


def test_worker_connects_to_the_embedded_broker(venv: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    migrate(venv, env, tmp_path)
    log = tmp_path / "worker.log"
    with running(venv, ["python", "-m", "worker"], env, log) as worker:
        text = wait_for_ready(worker, log)
    assert "sqla+sqlite://" in text, text[-2000:]


def test_embedded_service_trains_a_job(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(tmp_path, VITQ_MAX_ATTEMPTS="1")
    log = tmp_path / "serve.log"
    with (
        running(venv, ["vitq", "serve", "--port", str(port)], env, log) as serve,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                job = client.post(
                    "/jobs", content=tiny_spec("installed"), headers={"content-type": "application/yaml"}
                )
                break
            except httpx.TransportError:
                assert serve.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (status := client.get(f"/jobs/{job_id}").json())["status"] not in FINISHED:
            assert time.monotonic() < deadline, f"{status}\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
    assert status["status"] == "succeeded", status
