"""The run-directory contract, written with the trainer's code and read with the worker's (vit.rundir), on real
files: metrics lines, checkpoint discovery, the history rewind, the lease and the trainer lock, the log tail."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

from torch import nn

from vit import checkpoint, rundir
from vit.metrics_log import MetricsLog


def test_what_the_trainer_logs_the_worker_reads_line_by_line(tmp_path: Path) -> None:
    reader = rundir.MetricsReader(tmp_path)
    assert reader.read_new() == []  # the trainer has not written anything yet
    log = MetricsLog(tmp_path, enabled=True, total_steps=20)
    log.log(10, {"loss": 2.0, "lr": 0.1, "val_top1": float("nan")})
    first = reader.read_new()
    # A non-finite value is written as null and never becomes a point.
    assert sorted((p.name, p.step, p.value) for p in first) == [("loss", 10, 2.0), ("lr", 10, 0.1)]
    with (tmp_path / rundir.METRICS_FILE).open("a") as handle:
        handle.write('{"step": 20, "time": 2.5, "lo')  # the trainer is mid-write
    assert reader.read_new() == []
    with (tmp_path / rundir.METRICS_FILE).open("a") as handle:
        handle.write('ss": 1.0, "flag": true, "a\\u0000b": 3}\nnot json\n')
    second = reader.read_new()
    # NUL is dropped from names: PostgreSQL text cannot hold it, and one bad name would fail the whole batch.
    assert [(p.name, p.step, p.value, p.time) for p in second] == [
        ("loss", 20, 1.0, 2.5),
        ("ab", 20, 3.0, 2.5),
    ]
    assert reader.read_new() == [] and reader.last_step == 20 and reader.malformed == 1
    log.close()


def save(run_dir: Path, step: int, keep: int = 5) -> Path:
    model = nn.Linear(2, 2)
    return checkpoint.save_checkpoint(
        run_dir, step=step, model=model, state={"step": step}, spec={}, keep=keep
    )


def test_the_worker_sees_the_checkpoints_the_trainer_saved_and_never_its_leftovers(tmp_path: Path) -> None:
    assert rundir.scan_checkpoints(tmp_path) == [] and rundir.latest_checkpoint_step(tmp_path) is None
    save(tmp_path, 10)
    save(tmp_path, 20)
    root = rundir.checkpoints_root(tmp_path)
    # What a crash mid-save or mid-replace leaves, even with a meta.json inside: never a checkpoint.
    for leftover in (".tmp-step-000030", ".old-step-000040", "step-000050"):
        (root / leftover).mkdir()
        if leftover != "step-000050":
            (root / leftover / rundir.META_FILE).write_text(json.dumps({"step": 1}))
    found = rundir.scan_checkpoints(tmp_path)
    size = (root / "step-000020" / rundir.WEIGHTS_FILE).stat().st_size
    assert [(c.name, c.step, c.size_bytes) for c in found] == [
        ("step-000010", 10, size),
        ("step-000020", 20, size),
    ]
    assert rundir.latest_checkpoint_step(tmp_path) == 20


def test_a_stale_or_bad_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 10)
    save(tmp_path, 30)
    save(tmp_path, 20)  # latest names step 20, the last one saved
    assert rundir.latest_checkpoint(tmp_path) == rundir.checkpoints_root(tmp_path) / "step-000020"
    latest = rundir.checkpoints_root(tmp_path) / rundir.LATEST_FILE
    for bad in ("step-000099\n", "../../etc\n", "", "step-000010/../step-000030\n"):
        latest.write_text(bad)
        assert rundir.latest_checkpoint_step(tmp_path) == 30, bad  # the newest, not the first found
    latest.unlink()
    assert rundir.latest_checkpoint_step(tmp_path) == 30


def test_rewind_keeps_lines_up_to_the_resumed_step(tmp_path: Path) -> None:
    lines = [rundir.metrics_line(s, {"loss": 1.0}, at=0.0) for s in (10, 20, 30)]
    (tmp_path / rundir.METRICS_FILE).write_text("".join(lines) + '{"step": 15, "ti')
    rundir.rewind_metrics(tmp_path, 20)
    assert (tmp_path / rundir.METRICS_FILE).read_text() == "".join(lines[:2])
    rundir.rewind_metrics(tmp_path, None)
    assert (tmp_path / rundir.METRICS_FILE).read_text() == ""


def test_a_lease_is_valid_until_its_time_and_only_for_its_attempt(tmp_path: Path) -> None:
    assert not rundir.lease_valid(tmp_path, 1)
    rundir.renew_lease(tmp_path, 1, valid_until=time.time() + 60)
    assert rundir.lease_valid(tmp_path, 1) and not rundir.lease_valid(tmp_path, 2)
    assert not rundir.lease_valid(tmp_path, 1, now=time.time() + 61)
    rundir.renew_lease(tmp_path, 2, valid_until=time.time() - 1)  # a renewal written late, after a stall
    assert not rundir.lease_valid(tmp_path, 2) and rundir.lease_valid(tmp_path, 1)
    rundir.lease_path(tmp_path, 3).write_text("[]")
    assert not rundir.lease_valid(tmp_path, 3)


def test_attempt_start_records_where_the_trainer_resumed(tmp_path: Path) -> None:
    assert rundir.attempt_started(tmp_path, 1) == (False, None)
    rundir.record_attempt_start(tmp_path, 1, None)
    rundir.record_attempt_start(tmp_path, 2, 40)
    assert rundir.attempt_started(tmp_path, 1) == (True, None)
    assert rundir.attempt_started(tmp_path, 2) == (True, 40)


def _hold_lock(run_dir: str, ready: mp.synchronize.Event, release: mp.synchronize.Event) -> None:
    with rundir.trainer_lock(Path(run_dir), keep_waiting=lambda: False) as locked:
        assert locked
        ready.set()
        release.wait(30)


def test_the_trainer_lock_excludes_a_second_trainer_until_the_first_is_gone(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(30)
    assert rundir.lock_held(tmp_path)
    with rundir.trainer_lock(tmp_path, keep_waiting=lambda: False) as locked:
        assert not locked  # gave up at once
    asked = []
    with rundir.trainer_lock(
        tmp_path, keep_waiting=lambda: asked.append(1) or len(asked) < 3, poll_s=0.01
    ) as locked:
        assert not locked and len(asked) == 3  # waited while told to, then gave up
    holder.kill()  # however the holder dies, the kernel drops its lock
    holder.join()
    with rundir.trainer_lock(tmp_path, keep_waiting=lambda: False) as locked:
        assert locked
    assert not rundir.lock_held(tmp_path)


def test_log_tail_drops_the_launcher_report_and_finds_the_exit_code(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text(
        "=== attempt 1 ===\n"
        "error: data.root /data/empty holds no images\n"
        "Traceback (most recent call last):\n"
        '  File "torch/distributed/run.py", line 1142, in <module>\n'
        f"{rundir.LAUNCHER_FAILURE}: \n"
        "Root Cause (first observed failure):\n"
        "  exitcode  : 2 (pid: 123)\n"
    )
    start = len("=== attempt 1 ===\n")
    assert rundir.log_tail(log, start) == ("error: data.root /data/empty holds no images", 2)
    assert rundir.log_tail(tmp_path / "missing.log") == ("", None)


def test_the_run_directory_module_needs_no_torch() -> None:
    # The API and the worker import it (and the state machine): neither may pay for, or need, torch.
    probe = (
        "import sys, vit.rundir, api.core.state_machine, worker.fenced_writes; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
