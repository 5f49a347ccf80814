"""The database or the broker goes away mid-job and comes back: no attempt is spent, nothing is lost."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from .harness import chaos_stack

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]  # a crowded CPU makes minutes of seconds


def test_database_restart_shorter_than_half_the_lease_costs_no_attempt(tmp_path: Path) -> None:
    # Long, so the outage (about 6 s with the restart) is under the 30 % of it the supervisor rides out (half,
    # says the issue) even after a heartbeat's gap and a retry backoff of up to 5 s.
    lease = 40.0
    with chaos_stack(tmp_path, workers=1, lease_seconds=lease) as chaos:
        job_id = chaos.post_open_ended()
        chaos.wait_for_checkpoint(job_id)
        down_at = time.monotonic()
        chaos.pg.stop()  # immediate: every connection cut, as in a crash
        time.sleep(4)
        chaos.pg.start()
        outage = time.monotonic() - down_at
        assert outage < lease * 0.3 - 5, f"the restart took {outage:.1f} s: not the fault under test"
        step_back = chaos.stack.wait_for(job_id, lambda j: j["step"] > 0, timeout=60, what="progress")["step"]
        chaos.stack.wait_for(
            job_id, lambda j: j["step"] > step_back, timeout=60, what="progress after the outage"
        )
        chaos.end(job_id, attempt=1)
        # The trainer trained on through the outage: one process, never restarted.
        assert len(chaos.sampler.pids[job_id]) == 1, chaos.sampler.pids


def test_broker_restart_loses_no_attempt_and_jobs_posted_meanwhile_run_on_its_return(tmp_path: Path) -> None:
    lease = 6.0
    with chaos_stack(tmp_path, workers=2, lease_seconds=lease) as chaos:
        running = chaos.post_open_ended()
        chaos.wait_for_checkpoint(running)
        chaos.broker.stop()  # SIGKILL, no persistence: every message in it is gone
        posted_meanwhile = chaos.post(steps=50)  # stored; its message cannot be sent
        time.sleep(3)
        chaos.broker.start()
        back = datetime.now().astimezone()

        started = chaos.stack.wait_for(
            posted_meanwhile, lambda j: j["started_at"] is not None, timeout=lease * 4, what="a start"
        )
        waited = (datetime.fromisoformat(started["started_at"]) - back).total_seconds()
        assert waited < lease * 2, f"started {waited:.1f} s after the broker came back"
        chaos.wait_finished(posted_meanwhile, timeout=60)
        chaos.assert_ran_once(posted_meanwhile, status="succeeded", attempt=1, steps=50)
        chaos.end(running, attempt=1)
