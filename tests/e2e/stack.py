"""A real service for end-to-end tests: the API (create_app under uvicorn, in a thread), real `python -m worker`
processes, and the database and broker the settings name. Helpers to post jobs and wait for states."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from api.core.migrate import upgrade
from api.core.settings import Settings
from api.server.app import create_app
from worker.launch import descendants

FINISHED = ("succeeded", "failed", "cancelled")


def tiny_spec(*, steps: int = 30, checkpoint_every: int = 10, **sections: dict[str, Any]) -> dict[str, Any]:
    """A spec that trains in well under a second per few dozen steps on one CPU thread."""
    spec: dict[str, Any] = {
        "kind": "pretrain",
        "name": "tiny",
        "model": {"variant": "Ti/4", "image_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2},
        "data": {"dataset": "synthetic", "synthetic_size": 256, "num_workers": 0},
        "train": {"steps": steps, "batch_size": 32, "checkpoint_every": checkpoint_every, "log_every": 5},
        "resources": {"device": "cpu"},
    }
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


@dataclass
class Stack:
    settings: Settings
    client: httpx.Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "VITQ_HOME": str(s.home),
            "VITQ_DATABASE_URL": s.resolved_database_url,
            "VITQ_BROKER_URL": s.resolved_broker_url,
            "VITQ_STORAGE": str(s.resolved_storage),
            "VITQ_DATA_DIR": str(s.resolved_data_dir),
            "VITQ_QUEUE": s.queue,
            "VITQ_LEASE_SECONDS": str(s.lease_seconds),
            "VITQ_HEARTBEAT_SECONDS": str(s.heartbeat_seconds),
            "VITQ_MAX_ATTEMPTS": str(s.max_attempts),
            "OMP_NUM_THREADS": "1",
        }

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """A `python -m worker` process; `env` adds VITQ_* settings of its own (e.g. VITQ_DEVICES, VITQ_POOL)."""
        log = (self.settings.home / f"worker-{len(self.workers)}.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"], env={**self.env(), **env}, stdout=log, stderr=log
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """kill -9 the worker and every process it started, at once (a machine dying)."""
        for pid in [worker.pid, *descendants(worker.pid)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait()

    def kill_trainer(self, job_id: int) -> int:
        """kill -9 only the job's training process, as the kernel's OOM killer would: its worker lives on.
        Returns once the process is dead (gone, or a zombie its worker has yet to reap), so nothing it writes
        lands after the caller reads the run directory. The pid is returned."""
        out = str(self.settings.run_dir(job_id))
        live = [w.pid for w in self.workers if w.poll() is None]
        pids = [pid for worker in live for pid in descendants(worker) if _runs_trainer(pid, out)]
        assert len(pids) == 1, f"job {job_id}: expected one training process below the workers, found {pids}"
        [pid] = pids
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _process_state(pid) not in (None, "Z"):
            assert time.monotonic() < deadline, f"trainer {pid} still alive after SIGKILL"
            time.sleep(0.02)
        return pid

    def post(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.client.get(f"/jobs/{job_id}").raise_for_status().json())

    def wait_for(
        self, job_id: int, done: Callable[[dict[str, Any]], bool], timeout: float = 90, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if done(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: timed out waiting for {what or done}; last state {job}")
            if job["status"] in FINISHED and job["status"] != what:
                raise AssertionError(f"job {job_id} ended {job['status']} while waiting for {what}: {job}")
            time.sleep(0.2)

    def wait_status(self, job_id: int, status: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_for(job_id, lambda job: job["status"] == status, timeout, what=status)

    def checkpoints(self, job_id: int) -> list[dict[str, Any]]:
        return list(self.client.get(f"/jobs/{job_id}/checkpoints").raise_for_status().json()["items"])

    def metric_steps(self, job_id: int, name: str) -> list[int]:
        response = self.client.get(f"/jobs/{job_id}/metrics", params={"names": name, "max_points": 100_000})
        series = response.raise_for_status().json()["series"]
        return list(series[name]["steps"]) if name in series else []


def _runs_trainer(pid: int, out: str) -> bool:
    """`python -m vit.train SPEC --out OUT` (see worker.launch.trainer_command)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "vit.train" in args and out in args


def _process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (R, S, Z, ...), None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    """Migrate, serve the API on a free port, and stop every worker (and its trainers) at the end."""
    for directory in (settings.home, settings.resolved_storage, settings.resolved_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    stack = Stack(settings=settings, client=httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
    try:
        yield stack
    finally:
        for worker in stack.workers:
            if worker.poll() is None:
                stack.kill_worker(worker)
        stack.client.close()
        server.should_exit = True
        thread.join(10)
