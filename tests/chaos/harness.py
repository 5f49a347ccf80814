"""A service to break: a private PostgreSQL and Redis (tests/services.py), the real API and `python -m worker`
processes (tests/e2e/stack.py), and a sampler counting each job's trainers. Plus the checks every chaos test
makes: the final state, the attempt, every metric step exactly once, never two trainers at once."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from api.core.settings import Settings
from tests.e2e.stack import FINISHED, Stack, running_stack, tiny_spec
from tests.services import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from worker.launch import descendants

from .sampler import TrainerSampler, trainer_processes

LOG_EVERY = 5  # tiny_spec's train.log_every
OPEN_ENDED_STEPS = 10_000_000
BATCH_SIZE = 8  # a step in milliseconds even on a crowded CPU: the faults, not the training, take the time
QUEUE = "chaos"


@dataclass
class Chaos:
    stack: Stack
    pg: PrivatePostgres
    broker: PrivateRedis
    sampler: TrainerSampler

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def post(self, steps: int, checkpoint_every: int = 25, priority: int = 0) -> int:
        spec = tiny_spec(
            steps=steps,
            checkpoint_every=checkpoint_every,
            train={"batch_size": BATCH_SIZE},
            resources={"priority": priority},
        )
        return int(self.stack.post(spec)["id"])

    def post_open_ended(self) -> int:
        """A job that trains until the test has done its part (then `end`), however fast the machine trains: a
        fault window must not depend on a step count tuned to one machine."""
        return self.post(steps=OPEN_ENDED_STEPS)

    def end(self, job_id: int, *, attempt: int) -> dict[str, Any]:
        """Cancel an open-ended job and check it ran as `attempt` with every step it logged stored once."""
        assert self.training(job_id), (
            f"the open-ended job stopped before the test ended it: {self.stack.job(job_id)}\n{self.worker_logs()}"
        )
        assert self.stack.client.post(f"/jobs/{job_id}/cancel").status_code == 202
        self.wait_finished(job_id, timeout=120)
        return self.assert_ran_once(job_id, status="cancelled", attempt=attempt, steps=None)

    def holder(self, job_id: int) -> subprocess.Popen[bytes]:
        """The live worker whose descendants include the job's trainer."""
        trainers = {t.pid for t in trainer_processes(self.jobs_root) if t.job_id == job_id}
        holders = [w for w in self.stack.workers if w.poll() is None and trainers & set(descendants(w.pid))]
        assert len(holders) == 1, f"job {job_id}: trainers {trainers}, holders {[w.pid for w in holders]}"
        return holders[0]

    @property
    def jobs_root(self) -> Path:
        return self.settings.resolved_storage / "jobs"

    def training(self, job_id: int) -> bool:
        """A trainer of the job is alive right now (seen in /proc: works while the database is down)."""
        return any(t.job_id == job_id for t in trainer_processes(self.jobs_root))

    def launched(self, job_id: int) -> int:
        """The job's trainer processes alive now, started or still waiting to start."""
        return sum(t.job_id == job_id for t in trainer_processes(self.jobs_root, writing=False))

    def wait_finished(self, job_id: int, timeout: float) -> None:
        """Until the job ends, however it ends: assert_ran_once then says what went wrong."""
        self.stack.wait_for(job_id, lambda j: j["status"] in FINISHED, timeout, "the end")

    def wait_for_checkpoint(self, job_id: int, timeout: float = 60) -> None:
        self.stack.wait_for(job_id, lambda j: bool(self.stack.checkpoints(j["id"])), timeout, "a checkpoint")

    def queued_messages(self) -> list[int]:
        """Job ids of the task messages waiting in the Redis queue, oldest first (kombu's Redis transport:
        LPUSH onto a list named after the queue, BRPOP from its other end; the body is base64 JSON)."""
        client = redis.Redis.from_url(self.broker.url)
        try:
            raw = client.lrange(QUEUE, 0, -1)
        finally:
            client.close()
        ids = []
        for entry in reversed(raw):
            body = json.loads(base64.b64decode(json.loads(entry)["body"]))
            ids.append(int(body[0][0]))
        return ids

    def worker_lines(self) -> list[str]:
        """Every line of every worker's log, whole (worker_logs keeps only their ends, for failure messages)."""
        return [
            line
            for path in sorted(self.settings.home.glob("worker-*.log"))
            for line in path.read_text(errors="replace").splitlines()
        ]

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.settings.home.glob("worker-*.log"))
        )

    def assert_ran_once(self, job_id: int, *, status: str, attempt: int, steps: int | None) -> dict[str, Any]:
        """The job ended `status` as `attempt`, every logged step stored exactly once (in the database and in
        metrics.jsonl; up to `steps`, or for an open-ended job up to the last it logged), and no two of its
        trainers ever ran at the same moment."""
        job = self.stack.job(job_id)
        summary = {k: v for k, v in job.items() if k not in ("spec", "latest_metrics")}
        context = f"job {job_id}: {summary}\n{self.worker_logs()}"
        assert (job["status"], job["attempt"]) == (status, attempt), context
        self.sampler.assert_never_two(job_id)
        stored = self.stack.metric_steps(job_id, "loss")
        last = steps if steps is not None else max(stored, default=0)
        expected = list(range(LOG_EVERY, last + 1, LOG_EVERY))
        assert stored == expected, f"database: {step_errors(stored, expected)}"
        written = metrics_file_steps(self.settings.run_dir(job_id))
        assert written == expected, f"metrics.jsonl: {step_errors(written, expected)}"
        return job


def step_errors(steps: list[int], expected: list[int]) -> str:
    """What is wrong with a metric history, briefly: repeated steps, missing ones, the order."""
    seen: set[int] = set()
    repeated = []
    for step in steps:
        if step in seen:
            repeated.append(step)
        seen.add(step)
    missing = sorted(set(expected) - seen)
    unexpected = sorted(seen - set(expected))
    return (
        f"{len(repeated)} repeated {repeated[:5]}..., {len(missing)} missing {missing[:5]}..., "
        f"unexpected {unexpected[:5]}, in order: {steps == sorted(steps)}"
    )


def metrics_file_steps(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl's training lines (those with a loss), in file order."""
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps.append(int(record["step"]))
    return steps


def wait_until(condition: Any, timeout: float, what: str, poll: float = 0.2) -> float:
    """Poll `condition()` until true; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return time.monotonic() - start


def freeze(process: subprocess.Popen[bytes], *, with_descendants: bool) -> None:
    """SIGSTOP the worker: alone, its trainer runs on (a hung supervisor); with its descendants, the whole
    machine stalls (a frozen VM). The worker first, so it starts nothing new meanwhile."""
    os.kill(process.pid, signal.SIGSTOP)
    for pid in descendants(process.pid) if with_descendants else []:
        with suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signal.SIGSTOP)


def thaw(process: subprocess.Popen[bytes], *, with_descendants: bool) -> None:
    for pid in descendants(process.pid) if with_descendants else []:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    os.kill(process.pid, signal.SIGCONT)


@contextmanager
def chaos_stack(
    home: Path, *, workers: int, lease_seconds: float = 6, heartbeat_seconds: float = 1
) -> Iterator[Chaos]:
    """Private PostgreSQL and Redis, the API, `workers` worker processes and a running trainer sampler."""
    with ExitStack() as resources:
        pg = resources.enter_context(private_postgres())
        broker = resources.enter_context(private_redis())
        settings = Settings(
            home=home,
            database_url=pg.url,
            broker_url=broker.url,
            queue=QUEUE,
            lease_seconds=lease_seconds,
            heartbeat_seconds=heartbeat_seconds,
            max_attempts=3,
            auth="off",  # every request a local admin: these tests break servers, not permissions
        )
        stack = resources.enter_context(running_stack(settings))
        sampler = resources.enter_context(TrainerSampler(settings.resolved_storage / "jobs"))
        for _ in range(workers):
            stack.start_worker()
        yield Chaos(stack=stack, pg=pg, broker=broker, sampler=sampler)
