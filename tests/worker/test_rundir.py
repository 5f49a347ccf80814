"""Following metrics.jsonl and reading the run directory, on real files."""

from __future__ import annotations

import json
from pathlib import Path

from worker import rundir
from worker.follow import MetricsFollower


def test_follower_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.read_new() == []  # the trainer has not written anything yet
    with path.open("w") as handle:
        handle.write(json.dumps({"step": 10, "time": 1.5, "loss": 2.0, "lr": 0.1}) + "\n")
        handle.write('{"step": 20, "time": 2.5, "lo')  # the trainer is mid-write
    first = follower.read_new()
    assert sorted((p.name, p.step, p.value) for p in first) == [("loss", 10, 2.0), ("lr", 10, 0.1)]
    with path.open("a") as handle:
        handle.write('ss": 1.0, "flag": true, "a\\u0000b": 3}\nnot json\n')
    second = follower.read_new()
    # NUL is dropped from names: PostgreSQL text cannot hold it, and one bad name would fail the whole batch.
    assert [(p.name, p.step, p.value, p.time) for p in second] == [
        ("loss", 20, 1.0, 2.5),
        ("ab", 20, 3.0, 2.5),
    ]
    assert follower.read_new() == [] and follower.last_step == 20


def write_checkpoint(run_dir: Path, step: int, *, complete: bool = True) -> str:
    name = f"step-{step:06d}"
    directory = run_dir / "checkpoints" / name
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"x" * step)
    if complete:
        (directory / "meta.json").write_text(json.dumps({"step": step, "time": 0.0, "spec": {}}))
    return name


def test_scan_lists_complete_checkpoints_and_latest_step(tmp_path: Path) -> None:
    assert rundir.scan_checkpoints(tmp_path) == [] and rundir.latest_checkpoint_step(tmp_path) is None
    write_checkpoint(tmp_path, 20)
    latest = write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 30, complete=False)
    (tmp_path / "checkpoints" / "latest").write_text(latest)
    found = rundir.scan_checkpoints(tmp_path)
    assert [(c.name, c.step, c.size_bytes) for c in found] == [
        ("step-000010", 10, 10),
        ("step-000020", 20, 20),
    ]
    assert rundir.latest_checkpoint_step(tmp_path) == 10


def test_rewind_keeps_lines_up_to_the_resumed_step(tmp_path: Path) -> None:
    lines = [json.dumps({"step": s, "time": 0.0, "loss": 1.0}) + "\n" for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 40, "ti')
    rundir.rewind_metrics(tmp_path, 20)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])
    rundir.rewind_metrics(tmp_path, None)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_log_tail_drops_the_launcher_report_and_finds_the_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
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
