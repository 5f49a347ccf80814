"""The run directory: the one contract between the trainer, the worker and the API (torch-free, stdlib only).

Layout (docs/contracts.md):

    RUN_DIR/spec.json                   the resolved spec the trainer runs
    RUN_DIR/metrics.jsonl               one JSON object per line: {"step", "time", **metrics}
    RUN_DIR/train.log                   the launcher's stdout and stderr (written by the worker)
    RUN_DIR/checkpoints/step-NNNNNN/    model.safetensors, state.pt, meta.json (written last: marks it complete)
    RUN_DIR/checkpoints/latest          a text file naming the newest checkpoint
    RUN_DIR/trainer.lock                held (flock) by the running trainer; the kernel drops it when it dies
    RUN_DIR/lease-N.json                attempt N's lease, renewed by its supervisor: {"attempt", "valid_until"}
    RUN_DIR/attempt-N.json              written by attempt N's trainer once it holds the lock:
                                        {"attempt", "resumed_from"} (the step it resumed from, or null)

Every writer goes through this module, every reader too: the trainer, the worker and the API agree on names,
on which checkpoint is complete and newest, and on where a resumed attempt's metric history ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
WEIGHTS_FILE = "model.safetensors"
EMA_WEIGHTS_FILE = "ema.safetensors"  # next to WEIGHTS_FILE in runs with train.ema_decay
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LOCK_FILE = "trainer.lock"
CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
RESERVED_METRIC_KEYS = ("step", "time")
MAX_METRIC_NAME = 64

# The trainer's exit codes (vit.train); the worker decides retries by them.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2  # bad spec or bad data: retrying cannot help
EXIT_FENCED = 74  # its lease ran out (the supervisor stopped renewing it): stopped without saving
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request after saving a checkpoint; resumable


# ------------------------------------------------------------------------------------------------ atomic files
def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` durable (directories are fsynced through a read-only fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` as a whole or not at all: temporary name in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; ValueError when the file holds anything else."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


# ------------------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint directory (it has meta.json)."""

    name: str
    step: int
    size_bytes: int  # of model.safetensors


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """The step a checkpoint directory name stands for; None for anything else (temporary or leftover dirs)."""
    match = CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoints_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first. `.tmp-step-*` (being saved) and `.old-step-*` (being
    replaced) never count, even with a meta.json inside."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p.name) is not None and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p.name) or 0)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names; if that file is missing or names no complete checkpoint, the newest one."""
    latest = checkpoints_root(run_dir) / LATEST_FILE
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        name = latest.read_text().strip()
        candidate = checkpoints_root(run_dir) / name
        if checkpoint_step(name) is not None and (candidate / META_FILE).is_file():
            return candidate
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step the trainer resumes from; None for a fresh start."""
    found = latest_checkpoint(run_dir)
    return checkpoint_step(found.name) if found is not None else None


def run_complete(run_dir: Path, total_steps: int) -> bool:
    """True once the checkpoint of the run's last step is complete: the trainer saves it after that step's
    metrics line and evaluation, so nothing is left to train or to write (vit/trainer.py's "already complete")."""
    return latest_checkpoint_step(run_dir) == total_steps


def scan_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints with their sizes, oldest first (a directory pruned while scanning is skipped)."""
    found = []
    for directory in complete_checkpoints(run_dir):
        step = checkpoint_step(directory.name)
        try:
            size = (directory / WEIGHTS_FILE).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            continue
        assert step is not None
        found.append(CheckpointInfo(directory.name, step, size))
    return found


# ------------------------------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class MetricPoint:
    name: str
    step: int
    value: float
    time: float


def metrics_line(step: int, metrics: dict[str, float], at: float | None = None) -> str:
    """One metrics.jsonl line (with its newline). A non-finite value is written as null, so the line parses."""
    values = {key: (float(v) if math.isfinite(v) else None) for key, v in metrics.items()}
    return json.dumps({"step": step, "time": time.time() if at is None else at, **values}) + "\n"


def parse_metrics_line(line: str) -> tuple[int, list[MetricPoint]] | None:
    """(step, points) of one line; None for a malformed line. Names are cut to what the database holds and
    cleared of NUL characters; only finite numbers become points."""
    try:
        record = json.loads(line)
        step = int(record["step"])
        at = float(record["time"])
    except (ValueError, KeyError, TypeError):
        return None
    points = [
        MetricPoint(str(name).replace("\x00", "")[:MAX_METRIC_NAME], step, float(value), at)
        for name, value in record.items()
        if name not in RESERVED_METRIC_KEYS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ]
    return step, points


def rewind_metrics(run_dir: Path, last_step: int | None) -> None:
    """Cut metrics.jsonl back to the checkpoint a new attempt resumes from: lines past it (and a partial last
    line) would repeat steps the attempt trains again. Only the trainer holding the lock calls this."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    kept = []
    if last_step is not None:
        for line in path.read_text().splitlines(keepends=True):
            parsed = parse_metrics_line(line) if line.endswith("\n") else None
            if parsed is not None and parsed[0] <= last_step:
                kept.append(line)
    atomic_write_text(path, "".join(kept))


class MetricsReader:
    """Follows metrics.jsonl: reads only new bytes and leaves a partial last line for the next read."""

    READ_CHUNK_BYTES = 8 * 1024 * 1024  # bounds memory per read when catching up on a long file

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.offset = 0
        self.last_step = 0
        self.malformed = 0

    def read_new(self) -> list[MetricPoint]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.READ_CHUNK_BYTES)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        points: list[MetricPoint] = []
        for line in data[: end + 1].decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            parsed = parse_metrics_line(line)
            if parsed is None:
                self.malformed += 1
                continue
            self.last_step = max(self.last_step, parsed[0])
            points.extend(parsed[1])
        return points


# ------------------------------------------------------------------------------------------------ fencing
def lease_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"lease-{attempt}.json"


def attempt_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"attempt-{attempt}.json"


def renew_lease(run_dir: Path, attempt: int, valid_until: float) -> None:
    """The supervisor's promise that attempt `attempt` still holds the job until `valid_until` (unix seconds).
    Each attempt has its own file: a stalled supervisor waking up can never extend its successor's lease."""
    write_json(lease_path(run_dir, attempt), {"attempt": attempt, "valid_until": valid_until})


def lease_valid(run_dir: Path, attempt: int, now: float | None = None) -> bool:
    try:
        lease = read_json_object(lease_path(run_dir, attempt))
        valid_until = float(lease["valid_until"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (time.time() if now is None else now) < valid_until


def record_attempt_start(run_dir: Path, attempt: int, resumed_from: int | None) -> None:
    write_json(attempt_path(run_dir, attempt), {"attempt": attempt, "resumed_from": resumed_from})


def attempt_started(run_dir: Path, attempt: int) -> tuple[bool, int | None]:
    """(started, resumed_from) as attempt `attempt`'s trainer recorded them once it held the lock."""
    try:
        record = read_json_object(attempt_path(run_dir, attempt))
        resumed = record["resumed_from"]
    except (OSError, ValueError, KeyError):
        return False, None
    return True, int(resumed) if resumed is not None else None


@contextlib.contextmanager
def trainer_lock(run_dir: Path, *, keep_waiting: Callable[[], bool], poll_s: float = 0.2) -> Iterator[bool]:
    """Hold RUN_DIR/trainer.lock for the body. Waits while another process holds it (a predecessor still
    stopping) and `keep_waiting()` says so; yields False if it gave up. The kernel drops the lock when the
    holder dies, however it dies, so a successor never shares the directory with a live predecessor."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not keep_waiting():
                    yield False
                    return
                time.sleep(poll_s)
        yield True
    finally:
        os.close(fd)  # releases the lock


def lock_held(run_dir: Path) -> bool:
    """True while some process holds the trainer lock (tests and the worker's diagnostics)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ------------------------------------------------------------------------------------------------ log
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
# torchrun's own report when a training process fails: its traceback, then "Root Cause ... exitcode : N".
LAUNCHER_FAILURE = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
ROOT_CAUSE_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")


def log_tail(path: Path, start: int = 0) -> tuple[str, int | None]:
    """The last lines the trainer wrote to train.log since byte `start` (this attempt's part), without
    torchrun's failure report, and the failed training process's exit code that report names (torchrun itself
    always exits 1)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, size - LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return "", None
    return tail_of(lines)


def tail_of(lines: list[str]) -> tuple[str, int | None]:
    """log_tail's answer for the trainer's last output lines, wherever they were kept (a capped train.log's
    dropped lines stay in the worker's memory: worker/log_cap.py)."""
    exit_code = None
    report = next((i for i in range(len(lines) - 1, -1, -1) if LAUNCHER_FAILURE in lines[i]), None)
    if report is not None:
        match = ROOT_CAUSE_EXIT.search("\n".join(lines[report:]))
        exit_code = int(match.group(1)) if match else None
        start_of_report = max((i for i in range(report) if lines[i].startswith("Traceback")), default=report)
        lines = lines[:start_of_report]
    return "\n".join(lines[-LOG_TAIL_LINES:]), exit_code
