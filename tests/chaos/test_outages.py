"""The database or the broker goes away mid-job and comes back: no attempt is spent, nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vit import rundir

from .harness import Chaos, chaos_stack, wait_until
from .sampler import trainer_processes

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


def stop_trainer_midway(chaos: Chaos, job_id: int, steps: int) -> int:
    """SIGSTOP the job's trainer once it has saved a checkpoint or two (a trainer slow to exit: swapping, a
    long save, a hung data loader); it can neither train on nor obey a stop until SIGCONT. Returns its pid."""
    run_dir = chaos.settings.run_dir(job_id)
    wait_until(
        lambda: (rundir.latest_checkpoint_step(run_dir) or 0) >= 100, 120, "two checkpoints", poll=0.02
    )
    [trainer] = [t.pid for t in trainer_processes(chaos.jobs_root) if t.job_id == job_id]
    os.kill(trainer, signal.SIGSTOP)
    assert not rundir.run_complete(run_dir, steps), (
        "the job finished before the fault: not the fault under test"
    )
    return trainer


def worker_said(chaos: Chaos, text: str) -> bool:
    return any(text in line for line in chaos.worker_lines())


def api_answers(chaos: Chaos, job_id: int) -> bool:
    return chaos.stack.client.get(f"/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize("trainer_exits", ["killed-at-the-fence", "after-the-database-is-back"])
def test_database_outage_shorter_than_half_the_lease_costs_no_attempt_whatever_the_trainer_exit_time(
    tmp_path: Path, trainer_exits: str
) -> None:
    """Issue 23, item 17. The outage outlasts 30 % of the lease, so the supervisor orders the trainer to save and
    stop, but it ends before half the lease. The trainer, stopped (SIGSTOP), is slow to obey: either it is still
    stopped at the fence (half the lease without a confirmed renewal: the supervisor's retries back off to 5 s,
    so the first renewal after a 5-7 s outage comes after the fence of a 14 s lease) and the supervisor kills
    it, or it obeys once the database is back and renewals go on (a 50 s lease: its fence is out of reach).
    Either way the stop ends in a hand-back that costs no attempt: the job succeeds as attempt 1, every step
    stored once, and the checkpoints on disk are the ones the database lists."""
    steps = 400
    killed = trainer_exits == "killed-at-the-fence"
    lease = 14.0 if killed else 50.0
    with chaos_stack(tmp_path, workers=1, lease_seconds=lease) as chaos:
        job_id = chaos.post(steps=steps, checkpoint_every=50)
        trainer = stop_trainer_midway(chaos, job_id, steps)
        try:
            down_at = time.monotonic()
            chaos.pg.stop()  # immediate: every connection cut, as in a crash
            if killed:
                time.sleep(5.3)  # past the supervisor's retry at 3.5 s, before the next at 7.5 s
            else:
                wait_until(
                    lambda: worker_said(
                        chaos, "stopping the trainer (the database was unreachable too long)"
                    ),
                    lease * 0.4,
                    "the supervisor's stop order",
                )
            chaos.pg.start()
            back = datetime.now(UTC)
            outage = time.monotonic() - down_at
            assert outage < lease * 0.5, f"the outage took {outage:.1f} s: not the fault under test"
            if killed:
                # Stopped until the supervisor kills it: a SIGCONT before the fence would let it obey in time.
                wait_until(
                    lambda: worker_said(
                        chaos, f"job {job_id}: the database was unreachable too long; the trainer"
                    ),
                    lease,
                    "the supervisor to give the trainer up at the fence",
                )
            else:
                wait_until(lambda: api_answers(chaos, job_id), 30, "the API to recover")
                chaos.stack.wait_for(
                    job_id,
                    lambda j: datetime.fromisoformat(j["heartbeat_at"]) > back,
                    timeout=lease * 0.2,
                    what="a renewal after the outage",
                )
        finally:
            with suppress(ProcessLookupError):
                os.kill(trainer, signal.SIGCONT)  # it saves a checkpoint and exits 75 (or was killed)
        wait_until(lambda: api_answers(chaos, job_id), 30, "the API to recover")
        chaos.wait_finished(job_id, timeout=120)
        chaos.assert_ran_once(job_id, status="succeeded", attempt=1, steps=steps)
        listed = sorted(c["name"] for c in chaos.stack.checkpoints(job_id))
        on_disk = [c.name for c in rundir.scan_checkpoints(chaos.settings.run_dir(job_id))]
        assert listed == on_disk and on_disk[-1] == rundir.checkpoint_name(steps), (listed, on_disk)
        assert len(chaos.sampler.pids[job_id]) == 2, (
            chaos.sampler.pids
        )  # the stopped one, then the resumed one
        # Item 19: the log line says what the trainer did; a killed trainer saved nothing on the way out.
        ended = next(
            line
            for line in chaos.worker_lines()
            if f"job {job_id}: the database was unreachable too long;" in line
        )
        assert worker_said(
            chaos, f"job {job_id}: stopping the trainer (the database was unreachable too long)"
        )
        said = "killed by signal 9 without saving" if killed else "the trainer saved a checkpoint and stopped"
        assert said in ended, ended
        assert worker_said(chaos, f"job {job_id}: claimed, attempt 1 of 3") and not worker_said(
            chaos, f"job {job_id}: claimed, attempt 2"
        )
