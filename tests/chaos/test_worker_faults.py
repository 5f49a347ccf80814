"""Workers that die or stall mid-job: the job moves to another worker as the next attempt, its trainers never
overlap, and its metric history ends up with every step exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import chaos_stack, freeze, thaw, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]  # a crowded CPU makes minutes of seconds


def test_killed_worker_job_resumes_on_the_other_worker(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, workers=2) as chaos:
        job_id = chaos.post(steps=400, checkpoint_every=50)
        chaos.wait_for_checkpoint(job_id)
        chaos.stack.kill_worker(chaos.holder(job_id))  # kill -9 of the worker and its trainer at once

        chaos.stack.wait_for(job_id, lambda j: j["attempt"] == 2, timeout=90, what="attempt 2")
        chaos.wait_finished(job_id, timeout=240)
        chaos.assert_ran_once(job_id, status="succeeded", attempt=2, steps=400)


@pytest.mark.parametrize("with_trainer", [False, True], ids=["worker", "worker-and-trainer"])
def test_stalled_worker_never_shares_its_job(tmp_path: Path, with_trainer: bool) -> None:
    """SIGSTOP the holder past the lease (alone: a hung supervisor whose trainer runs on; or with its trainer:
    a frozen host), SIGCONT later. The other worker takes the job over as attempt 2; the old trainer must be gone
    before its successor starts, and the old worker, woken, must change nothing."""
    lease = 6.0
    with chaos_stack(tmp_path, workers=2, lease_seconds=lease) as chaos:
        # Open-ended: a trainer that finished every step during the stall would make the job complete on disk,
        # and that is recorded as the stalled attempt (tests/chaos/test_finished_work.py), not as attempt 2.
        job_id = chaos.post_open_ended()
        chaos.wait_for_checkpoint(job_id)
        stalled = chaos.holder(job_id)
        freeze(stalled, with_descendants=with_trainer)
        try:
            chaos.stack.wait_for(job_id, lambda j: j["attempt"] == 2, timeout=90, what="attempt 2")
            if with_trainer:
                # The frozen trainer cannot stop itself: its successor must wait for it, however long. Frozen
                # until a successor that did not wait would be training, even on a crowded CPU (or until it is).
                wait_until(lambda: chaos.launched(job_id) >= 2, 90, "the successor's process")
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline and len(chaos.sampler.pids.get(job_id, ())) < 2:
                    time.sleep(0.5)
            else:
                # The old trainer runs on: it must stop itself, and only then may the successor start.
                wait_until(lambda: len(chaos.sampler.pids.get(job_id, ())) >= 2, 90, "the successor training")
                time.sleep(lease)
        finally:
            thaw(stalled, with_descendants=with_trainer)
        chaos.stack.wait_for(
            job_id,
            lambda j: j["resumed_from_step"] is not None and j["step"] > j["resumed_from_step"],
            timeout=120,
            what="attempt 2 training past its checkpoint",
        )
        assert stalled.poll() is None, "the stalled worker died instead of going back to work"
        chaos.end(job_id, attempt=2)
