"""Broker messages lost or delivered twice: the database decides who runs a job, the reaper re-sends."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from .harness import QUEUE, chaos_stack, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]  # a crowded CPU makes minutes of seconds
STEPS = 300


def test_lost_message_is_sent_again_within_a_lease_while_others_wait(tmp_path: Path) -> None:
    lease = 6.0
    with chaos_stack(tmp_path, workers=0, lease_seconds=lease) as chaos:
        # Long enough for the trainer sampler (every 0.2 s) to see each trainer write: 30 steps ran in less on an
        # idle machine, and "no trainer was ever sampled" failed the test.
        lost = chaos.post(steps=STEPS)
        broker = redis.Redis.from_url(chaos.broker.url)
        assert broker.rpop(QUEUE) is not None  # consumed, never claimed: a worker died right after taking it
        # The head of the queue (claims take it, whichever message woke them): keeps the one worker busy
        # (cancelled once the message is back)...
        busy = chaos.post(steps=100_000, priority=10)
        waiting = chaos.post(steps=STEPS)  # ...so this message waits in the queue the whole time
        chaos.stack.start_worker()
        chaos.stack.wait_status(busy, "running", timeout=120)
        # Back to one wake-up per runnable job (lost, waiting). Messages are interchangeable (a claim takes the
        # first runnable job in queue order, whichever job its message names): a reaper pass that ran before the
        # claim may have re-sent the head's id instead, and that one wakes a worker for the lost job just as well.
        # Counted in the worker's reaper passes (each one beats), not in seconds: on a crowded CPU a pass may come
        # late, but the wake-up must be back at the first pass or the next (it raced the claim).
        passes: set[str] = set()

        def resent() -> bool:
            passes.update(w["heartbeat_at"] for w in chaos.stack.client.get("/workers").json()["items"])
            return len(chaos.queued_messages()) == 2

        wait_until(resent, timeout=240, what="the lost wake-up again")
        assert chaos.stack.job(busy)["status"] == "running" and waiting in chaos.queued_messages()
        assert len(passes) <= 3, f"re-sent after {len(passes)} reaper passes"

        assert chaos.stack.client.post(f"/jobs/{busy}/cancel").status_code == 202
        for job_id in (waiting, lost):
            chaos.wait_finished(job_id, timeout=240)
            chaos.assert_ran_once(job_id, status="succeeded", attempt=1, steps=STEPS)
        broker.close()


def test_message_delivered_twice_runs_the_job_once(tmp_path: Path) -> None:
    # A lease no slow heartbeat on a crowded CPU comes near: the one trainer must not be stopped for other reasons.
    with chaos_stack(tmp_path, workers=0, lease_seconds=20) as chaos:
        job_id = chaos.post(steps=200)
        broker = redis.Redis.from_url(chaos.broker.url)
        [message] = broker.lrange(QUEUE, 0, -1)
        broker.lpush(QUEUE, message)  # the same message again, as a redelivery after a lost ack hands it out
        broker.close()
        assert chaos.queued_messages() == [job_id, job_id]
        chaos.stack.start_worker()
        chaos.stack.start_worker()  # idle beside the first: each takes one copy

        chaos.wait_finished(job_id, timeout=240)
        wait_until(lambda: not chaos.queued_messages(), timeout=30, what="both copies consumed")
        job = chaos.assert_ran_once(job_id, status="succeeded", attempt=1, steps=200)
        assert len(chaos.sampler.pids[job_id]) == 1, chaos.sampler.pids  # one trainer, started once
        assert job["error"] is None
