"""Workers that die or stall mid-job: the job moves to another worker as the next attempt, its trainers never
overlap, and its metric history ends up with every step exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import chaos_stack, freeze, thaw, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]  # a crowded CPU makes minutes of seconds


def test_killed_worker_job_resumes_on_the_other_worker(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, workers=2) as chaos:
        job_id = chaos.post(steps=400, checkpoint_every=50)
        chaos.wait_for_checkpoint(job_id)
        chaos.stack.kill_worker(chaos.holder(job_id))  # kill -9 of the worker and its trainer at once

        chaos.stack.wait_for(job_id, lambda j: j["attempt"] == 2, timeout=60, what="attempt 2")
        chaos.wait_finished(job_id, timeout=240)
        chaos.assert_ran_once(job_id, status="succeeded", attempt=2, steps=400)


def test_stalled_worker_never_shares_its_job(tmp_path: Path) -> None:
    """SIGSTOP the holder past the lease: the other worker takes the job over. The stalled worker's trainer must
    stop by itself before its successor starts, and the stalled worker, woken, must write nothing."""
    lease = 6.0
    with chaos_stack(tmp_path, workers=2, lease_seconds=lease) as chaos:
        job_id = chaos.post(steps=1500, checkpoint_every=50)
        chaos.wait_for_checkpoint(job_id)
        stalled = chaos.holder(job_id)
        freeze(stalled)
        try:
            chaos.stack.wait_for(job_id, lambda j: j["attempt"] == 2, timeout=lease * 4, what="attempt 2")
            # The successor trains for a while beside the frozen worker before it wakes up.
            wait_until(lambda: len(chaos.sampler.pids.get(job_id, ())) >= 2, lease * 4, "the second trainer")
            time.sleep(lease)
        finally:
            thaw(stalled)
        chaos.wait_finished(job_id, timeout=240)
        assert stalled.poll() is None, "the stalled worker died instead of going back to work"
        chaos.assert_ran_once(job_id, status="succeeded", attempt=2, steps=1500)
