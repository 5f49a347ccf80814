"""Work that is complete is not run again and costs no further attempt (issue 23, item 18); a cancel that comes
after the last step lets the job succeed (item 19).

Both start from the same fault: the worker is SIGSTOPped (a hung supervisor) while its trainer, in a process
group of its own, runs on and finishes every step inside the lease file it was given."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vit import rundir

from .harness import Chaos, chaos_stack, freeze, thaw, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]  # a crowded CPU makes minutes of seconds

STEPS = 400  # about 1.6 s of training on this machine: the stall begins half-way


def last_logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / rundir.METRICS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def finish_under_a_stalled_worker(chaos: Chaos, job_id: int) -> int:
    """Freeze the job's worker half-way through its steps and wait for its trainer to finish them all and let
    go of its history (it may still be exiting). Returns the frozen worker's index in the stack."""
    run_dir = chaos.settings.run_dir(job_id)
    wait_until(lambda: last_logged_step(run_dir) >= STEPS // 2, 120, "half of the steps", poll=0.02)
    stalled = chaos.holder(job_id)
    freeze(stalled, with_descendants=False)
    # The trainer's lease file lasts half the lease from the last renewal: long enough for 200 tiny steps.
    wait_until(lambda: not chaos.training(job_id), chaos.settings.lease_seconds, "the trainer to finish")
    assert rundir.run_complete(run_dir, STEPS), (
        f"the trainer stopped at step {last_logged_step(run_dir)} of {STEPS} (fenced?): not the fault under test"
    )
    return chaos.stack.workers.index(stalled)


def checkpoint_names(chaos: Chaos, job_id: int) -> tuple[list[str], list[str]]:
    """(listed in the database, complete on disk)."""
    listed = sorted(c["name"] for c in chaos.stack.checkpoints(job_id))
    on_disk = [c.name for c in rundir.scan_checkpoints(chaos.settings.run_dir(job_id))]
    return listed, on_disk


def test_run_finished_under_a_stalled_worker_is_recorded_by_the_next_claim_without_training(
    tmp_path: Path,
) -> None:
    lease = 12.0
    with chaos_stack(tmp_path, workers=2, lease_seconds=lease) as chaos:
        job_id = chaos.post(steps=STEPS, checkpoint_every=100)
        index = finish_under_a_stalled_worker(chaos, job_id)
        stalled = chaos.stack.workers[index]
        try:
            # After the lease the other worker's reaper requeues the job, giving its attempt back (the run is
            # complete on disk); that worker claims it as attempt 1 again, finds the run complete and records it:
            # succeeded, no trainer started, no attempt spent on the finished work.
            chaos.wait_finished(job_id, timeout=lease * 4)
            job = chaos.assert_ran_once(job_id, status="succeeded", attempt=1, steps=STEPS)
            assert sum(f"job {job_id}: claimed, attempt 1 of 3" in line for line in chaos.worker_lines()) == 2
            assert job["resumed_from_step"] == STEPS and job["step"] == STEPS
            assert len(chaos.sampler.pids[job_id]) == 1, f"a trainer was started again: {chaos.sampler.pids}"
            train_log = (chaos.settings.run_dir(job_id) / rundir.LOG_FILE).read_text()
            assert train_log.count(f"already complete at step {STEPS}: recorded as succeeded") == 1, train_log
            listed, on_disk = checkpoint_names(chaos, job_id)
            assert listed == on_disk and on_disk[-1] == rundir.checkpoint_name(STEPS)
            before = (job, chaos.stack.metric_steps(job_id, "loss"), listed)
        finally:
            thaw(stalled, with_descendants=False)
        # Woken, the stale worker finds the job taken (its writes are refused) and changes nothing: no
        # hand-back, no failure, no third attempt.
        log_path = chaos.settings.home / f"worker-{index}.log"
        wait_until(
            lambda: f"job {job_id}: the job is no longer ours" in log_path.read_text(errors="replace"),
            60,
            "the stale worker to give the job up",
        )
        time.sleep(2)  # a write it would make after giving up would land within its next poll
        after = (
            chaos.stack.job(job_id),
            chaos.stack.metric_steps(job_id, "loss"),
            checkpoint_names(chaos, job_id)[0],
        )
        assert after == before
        assert stalled.poll() is None, "the stale worker died instead of going back to work"


def test_cancel_after_the_last_step_lets_the_job_succeed(tmp_path: Path) -> None:
    """Item 19: a cancel that arrives after the trainer's last checkpoint (here while its worker was stalled, so
    the supervisor reads the cancel once the trainer is exiting or gone) ends the job succeeded, all its training
    done, however the trainer then ends: its exit code 0, or the SIGTERM of the cancel during its teardown."""
    with chaos_stack(tmp_path, workers=1, lease_seconds=30) as chaos:
        job_id = chaos.post(steps=STEPS, checkpoint_every=100)
        index = finish_under_a_stalled_worker(chaos, job_id)
        stalled = chaos.stack.workers[index]
        try:
            cancelled = chaos.stack.client.post(f"/jobs/{job_id}/cancel")
            assert cancelled.status_code == 202, cancelled.text
        finally:
            thaw(stalled, with_descendants=False)
        chaos.wait_finished(job_id, timeout=60)
        job = chaos.assert_ran_once(job_id, status="succeeded", attempt=1, steps=STEPS)
        assert job["error"] is None
        listed, on_disk = checkpoint_names(chaos, job_id)
        assert listed == on_disk and on_disk[-1] == rundir.checkpoint_name(STEPS)
        ended = next(line for line in chaos.worker_lines() if f"job {job_id}: a cancel was" in line)
        assert "finished every step" in ended and "without saving" not in ended, ended
