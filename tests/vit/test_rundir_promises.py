"""vit.rundir's promises beyond test_rundir.py, on real files: checkpoint names and their numeric order, atomic
writes that leave nothing behind, metrics lines (names cut and cleaned, only finite numbers, malformed lines
counted), a reader that reads in bounded chunks and never past a partial line, the lease's strict deadline, and a
log tail bounded in lines and bytes that finds the exit code in torchrun's report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from vit import rundir


def test_checkpoint_names_and_steps() -> None:
    assert rundir.checkpoint_name(5) == "step-000005"
    assert rundir.checkpoint_name(1234567) == "step-1234567"
    assert rundir.checkpoint_step("step-000005") == 5
    assert rundir.checkpoint_step("step-1234567") == 1234567
    for name in (
        "step-00005",
        ".tmp-step-000005",
        ".old-step-000005",
        "step-000005x",
        "xstep-000005",
        "latest",
    ):
        assert rundir.checkpoint_step(name) is None, name


def _complete(run_dir: Path, name: str, weights: bytes = b"w") -> Path:
    directory = rundir.checkpoints_root(run_dir) / name
    directory.mkdir(parents=True)
    (directory / rundir.WEIGHTS_FILE).write_bytes(weights)
    (directory / rundir.META_FILE).write_text("{}")
    return directory


@pytest.mark.parametrize(
    ("names", "ordered"),
    [
        (  # by step, not by name
            ("step-1000000", "step-999999", "step-000100"),
            ["step-000100", "step-999999", "step-1000000"],
        ),
        (  # step 0 first
            ("step-000001", "step-000000", "step-000002"),
            ["step-000000", "step-000001", "step-000002"],
        ),
    ],
)
def test_checkpoints_are_ordered_by_step(tmp_path: Path, names: tuple[str, ...], ordered: list[str]) -> None:
    for name in names:
        _complete(tmp_path, name)
    assert [p.name for p in rundir.complete_checkpoints(tmp_path)] == ordered
    newest = int(ordered[-1].removeprefix("step-"))
    assert rundir.latest_checkpoint_step(tmp_path) == newest  # no `latest` file: the newest


def test_no_checkpoints_without_the_checkpoints_folder(tmp_path: Path) -> None:
    assert rundir.complete_checkpoints(tmp_path) == [] and rundir.latest_checkpoint(tmp_path) is None
    (tmp_path / rundir.CHECKPOINTS_DIR).write_text("a file, not a folder")
    assert rundir.complete_checkpoints(tmp_path) == [] and rundir.latest_checkpoint(tmp_path) is None


def test_a_latest_that_is_not_text_falls_back_to_the_newest(tmp_path: Path) -> None:
    newest = _complete(tmp_path, "step-000020")
    _complete(tmp_path, "step-000010")
    (rundir.checkpoints_root(tmp_path) / rundir.LATEST_FILE).write_bytes(b"\xff\xfe\x00")
    assert rundir.latest_checkpoint(tmp_path) == newest


def test_scan_skips_a_checkpoint_whose_weights_are_gone(tmp_path: Path) -> None:
    _complete(tmp_path, "step-000010", weights=b"12345")
    gone = _complete(tmp_path, "step-000020")
    (gone / rundir.WEIGHTS_FILE).unlink()
    assert rundir.scan_checkpoints(tmp_path) == [rundir.CheckpointInfo("step-000010", 10, 5)]


def test_atomic_writes_replace_the_file_and_leave_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "value.json"
    rundir.write_json(path, {"a": 1})
    rundir.write_json(path, [1, 2])
    assert path.read_text() == "[\n  1,\n  2\n]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]
    with pytest.raises(ValueError, match=r"value\.json is not a JSON object"):
        rundir.read_json_object(path)
    rundir.write_json(path, {"a": 1})
    assert rundir.read_json_object(path) == {"a": 1}


def test_metrics_lines_write_non_finite_values_as_null() -> None:
    line = rundir.metrics_line(7, {"loss": 1.5, "bad": math.inf, "nan": math.nan, "count": 3}, at=12.5)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"step": 7, "time": 12.5, "loss": 1.5, "bad": None, "nan": None, "count": 3.0}


def test_metrics_lines_are_stamped_with_the_current_time() -> None:
    import time

    before = time.time()
    stamped = json.loads(rundir.metrics_line(1, {}))["time"]
    assert before <= stamped <= time.time()


def test_parse_metrics_line() -> None:
    long_name = "n" * 100
    parsed = rundir.parse_metrics_line(
        json.dumps({"step": "5", "time": 2, "x": 1, long_name: 2.5, "flag": False, "s": "1", "inf": None})
    )
    assert parsed is not None
    step, points = parsed
    assert step == 5
    assert [(p.name, p.step, p.value, p.time) for p in points] == [
        ("x", 5, 1.0, 2.0),
        ("n" * 64, 5, 2.5, 2.0),
    ]
    assert all(isinstance(p.value, float) and isinstance(p.time, float) for p in points)
    for bad in (
        "not json",
        "[1]",
        '{"time": 1}',
        '{"step": 1}',
        '{"step": null, "time": 1}',
        '{"step": "x", "time": 1}',
    ):
        assert rundir.parse_metrics_line(bad) is None, bad


def test_rewind_of_a_run_without_metrics_creates_nothing(tmp_path: Path) -> None:
    rundir.rewind_metrics(tmp_path, 10)
    assert not (tmp_path / rundir.METRICS_FILE).exists()


def test_rewind_drops_malformed_lines_and_keeps_the_resumed_step(tmp_path: Path) -> None:
    lines = [rundir.metrics_line(s, {"loss": 1.0}, at=0.0) for s in (10, 20)]
    (tmp_path / rundir.METRICS_FILE).write_text(lines[0] + "garbage\n" + lines[1])
    rundir.rewind_metrics(tmp_path, 10)
    assert (tmp_path / rundir.METRICS_FILE).read_text() == lines[0]


def test_reader_reads_in_bounded_chunks_and_keeps_partial_lines(tmp_path: Path) -> None:
    lines = [rundir.metrics_line(s, {"loss": float(s)}, at=0.0) for s in range(1, 6)]
    (tmp_path / rundir.METRICS_FILE).write_text("".join(lines) + "\n")  # and a blank line
    reader = rundir.MetricsReader(tmp_path)
    reader.READ_CHUNK_BYTES = len(lines[0]) + 5  # one line and a bit of the next per read
    steps = []
    for _ in range(5):
        points = reader.read_new()
        assert len(points) == 1
        steps.append(points[0].step)
    assert steps == [1, 2, 3, 4, 5] and reader.last_step == 5
    assert reader.read_new() == [] and reader.malformed == 0
    assert reader.offset == (tmp_path / rundir.METRICS_FILE).stat().st_size


def test_reader_keeps_the_highest_step_seen(tmp_path: Path) -> None:
    lines = [rundir.metrics_line(s, {"loss": 1.0}, at=0.0) for s in (30, 10)]
    (tmp_path / rundir.METRICS_FILE).write_text("".join(lines))
    reader = rundir.MetricsReader(tmp_path)
    assert [p.step for p in reader.read_new()] == [30, 10]
    assert reader.last_step == 30


def test_a_lease_expires_at_its_time(tmp_path: Path) -> None:
    rundir.renew_lease(tmp_path, 1, valid_until=100.0)
    assert json.loads(rundir.lease_path(tmp_path, 1).read_text()) == {"attempt": 1, "valid_until": 100.0}
    assert rundir.lease_valid(tmp_path, 1, now=99.9)
    assert not rundir.lease_valid(tmp_path, 1, now=100.0)
    rundir.lease_path(tmp_path, 2).write_text('{"valid_until": "soon"}')
    assert not rundir.lease_valid(tmp_path, 2, now=0.0)
    rundir.lease_path(tmp_path, 3).write_text('{"valid_until": null}')
    assert not rundir.lease_valid(tmp_path, 3, now=0.0)
    rundir.lease_path(tmp_path, 4).write_text("{}")
    assert not rundir.lease_valid(tmp_path, 4, now=0.0)


def test_attempt_records(tmp_path: Path) -> None:
    rundir.record_attempt_start(tmp_path, 3, 40)
    assert json.loads(rundir.attempt_path(tmp_path, 3).read_text()) == {"attempt": 3, "resumed_from": 40}
    rundir.attempt_path(tmp_path, 4).write_text('{"attempt": 4}')
    assert rundir.attempt_started(tmp_path, 4) == (False, None)
    rundir.attempt_path(tmp_path, 5).write_text("not json")
    assert rundir.attempt_started(tmp_path, 5) == (False, None)


def test_no_lock_file_means_no_lock(tmp_path: Path) -> None:
    assert not rundir.lock_held(tmp_path)
    with rundir.trainer_lock(tmp_path, keep_waiting=lambda: False) as locked:
        assert locked and (tmp_path / rundir.LOCK_FILE).exists()


def _report(code: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "torch/distributed/run.py", line 1142, in <module>\n'
        f"{rundir.LAUNCHER_FAILURE}: \n"
        f"Root Cause (first observed failure):\n{code}"
    )


def test_log_tail_is_bounded_in_lines(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail, code = rundir.log_tail(log)
    assert (
        tail.splitlines() == [f"line {i}" for i in range(100 - rundir.LOG_TAIL_LINES, 100)] and code is None
    )


def test_log_tail_reads_only_the_last_bytes(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text("first\n" + "x" * rundir.LOG_TAIL_BYTES + "\nlast\n")
    tail, _ = rundir.log_tail(log)
    assert tail.endswith("\nlast") and "first" not in tail
    assert len(tail) == rundir.LOG_TAIL_BYTES - 1  # the last LOG_TAIL_BYTES bytes less the final newline


def test_log_tail_starts_at_this_attempt(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text("attempt 1 said this\nattempt 2 says this\n")
    assert rundir.log_tail(log, len("attempt 1 said this\n")) == ("attempt 2 says this", None)


@pytest.mark.parametrize(
    ("code", "expected"), [("  exitcode  : -9 (pid: 1)\n", -9), ("  exitcode:75\n", 75), ("", None)]
)
def test_log_tail_exit_code_from_the_launcher_report(tmp_path: Path, code: str, expected: int | None) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text("training\n" + _report(code))
    assert rundir.log_tail(log) == ("training", expected)


def test_log_tail_keeps_the_trainer_s_own_traceback(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    own = "Traceback (most recent call last):\nValueError: bad data\n"
    log.write_text(own + "between\n" + _report("  exitcode  : 1\n"))
    # The launcher's report is cut from its own Traceback line: the trainer's traceback before it stays.
    assert rundir.log_tail(log) == (own + "between", 1)


def test_log_tail_without_a_traceback_cuts_at_the_report(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text(f"training\n{rundir.LAUNCHER_FAILURE}: \n  exitcode  : 3\n")
    assert rundir.log_tail(log) == ("training", 3)


# Another process holding the lock, as a predecessor trainer would; plain Python, so it starts in milliseconds.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_the_lock_waits_while_told_to_and_is_free_once_its_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / rundir.LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert rundir.lock_held(tmp_path)
        asked: list[int] = []

        def keep_waiting() -> bool:
            asked.append(1)
            return len(asked) < 3

        with rundir.trainer_lock(tmp_path, keep_waiting=keep_waiting, poll_s=0.01) as locked:
            assert not locked and len(asked) == 3
    finally:
        holder.kill()
        holder.wait()
    assert not rundir.lock_held(tmp_path)
    with rundir.trainer_lock(tmp_path, keep_waiting=lambda: False) as locked:
        assert locked
        assert rundir.lock_held(tmp_path)
    assert not rundir.lock_held(tmp_path)


def test_reader_starts_at_step_zero_and_moves_past_a_leading_blank_line(tmp_path: Path) -> None:
    reader = rundir.MetricsReader(tmp_path)
    assert (reader.offset, reader.last_step, reader.malformed) == (0, 0, 0)
    (tmp_path / rundir.METRICS_FILE).write_text('\n{"step": 1')
    assert (
        reader.read_new() == [] and reader.offset == 1
    )  # the blank line is consumed, the partial one is not


def test_reader_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / rundir.METRICS_FILE).write_bytes(b'{"step": 3, "time": 1.0, "lo\xffss": 2.0}\n')
    points = rundir.MetricsReader(tmp_path).read_new()
    assert [(p.name, p.step, p.value) for p in points] == [("lo\ufffdss", 3, 2.0)]


def test_reader_goes_on_after_a_malformed_line(tmp_path: Path) -> None:
    good = rundir.metrics_line(4, {"loss": 1.0}, at=0.0)
    (tmp_path / rundir.METRICS_FILE).write_text("garbage\n" + good)
    reader = rundir.MetricsReader(tmp_path)
    assert [p.step for p in reader.read_new()] == [4] and reader.malformed == 1


def test_log_tail_of_an_empty_log_or_attempt(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text("")
    assert rundir.log_tail(log) == ("", None)
    log.write_text("attempt 1\n")
    assert rundir.log_tail(log, len("attempt 1\n")) == ("", None)


def test_log_tail_finds_a_report_on_the_last_line(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_text(f"training\n{rundir.LAUNCHER_FAILURE}: killed\n")
    assert rundir.log_tail(log) == ("training", None)


def test_log_tail_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    log = tmp_path / rundir.LOG_FILE
    log.write_bytes(b"loss \xff\n")
    assert rundir.log_tail(log) == ("loss \ufffd", None)


def test_rewind_drops_a_last_line_without_its_newline_even_if_it_parses(tmp_path: Path) -> None:
    kept = rundir.metrics_line(10, {"loss": 1.0}, at=0.0)
    (tmp_path / rundir.METRICS_FILE).write_text(
        kept + rundir.metrics_line(20, {"loss": 1.0}, at=0.0).rstrip("\n")
    )
    rundir.rewind_metrics(tmp_path, 30)
    assert (tmp_path / rundir.METRICS_FILE).read_text() == kept


def test_scan_goes_on_past_a_checkpoint_whose_weights_are_gone(tmp_path: Path) -> None:
    gone = _complete(tmp_path, "step-000010")
    (gone / rundir.WEIGHTS_FILE).unlink()
    _complete(tmp_path, "step-000020", weights=b"123")
    assert rundir.scan_checkpoints(tmp_path) == [rundir.CheckpointInfo("step-000020", 20, 3)]
