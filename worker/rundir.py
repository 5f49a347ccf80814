"""The run directory as the worker sees it: spec.json, checkpoints, metrics.jsonl rewinds, the log tail.

Layout (docs/contracts.md): RUN_DIR/spec.json, metrics.jsonl, train.log, checkpoints/step-NNNNNN/{meta.json,...},
checkpoints/latest (a text file naming the newest checkpoint).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from api.lifecycle import CheckpointFile

LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
# torchrun's own report when a training process fails: its traceback, then "Root Cause ... exitcode : N".
LAUNCHER_FAILURE = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
ROOT_CAUSE_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def write_spec(run_dir: Path, spec: dict[str, Any]) -> Path:
    path = run_dir / "spec.json"
    write_atomic(path, json.dumps(spec, indent=2) + "\n")
    return path


def scan_checkpoints(run_dir: Path) -> list[CheckpointFile]:
    """Complete checkpoints only: meta.json is written last, so a directory without it is still being saved."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for directory in root.iterdir():
        try:
            meta = json.loads((directory / "meta.json").read_text())
            size = (directory / "model.safetensors").stat().st_size
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            continue  # incomplete, being pruned by the trainer, or not a checkpoint at all
        found.append(CheckpointFile(directory.name, int(meta["step"]), size))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step the trainer will resume from (what checkpoints/latest names), None for a fresh start."""
    try:
        name = (run_dir / "checkpoints" / "latest").read_text().strip()
        meta = json.loads((run_dir / "checkpoints" / name / "meta.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return int(meta["step"])


def rewind_metrics(run_dir: Path, last_step: int | None) -> None:
    """Cut metrics.jsonl back to the resumed checkpoint: lines a dead attempt wrote past it (and a partial last
    line) would otherwise repeat steps the new attempt trains again."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    if last_step is not None:
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if step <= last_step:
                kept.append(line)
    write_atomic(path, "".join(kept))


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
    exit_code = None
    report = next((i for i in range(len(lines) - 1, -1, -1) if LAUNCHER_FAILURE in lines[i]), None)
    if report is not None:
        match = ROOT_CAUSE_EXIT.search("\n".join(lines[report:]))
        exit_code = int(match.group(1)) if match else None
        start_of_report = max((i for i in range(report) if lines[i].startswith("Traceback")), default=report)
        lines = lines[:start_of_report]
    return "\n".join(lines[-LOG_TAIL_LINES:]), exit_code
