"""Checkpoints in RUN_DIR/checkpoints: atomic save, keep the newest K, find the latest.

Layout (docs/contracts.md): step-{step:06d}/{model.safetensors, state.pt, meta.json} and a text file `latest`
naming the newest directory. A checkpoint is assembled in a temporary directory (each file fsynced, meta.json
last) and renamed into place, so a reader sees either no checkpoint or a complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit.weights import save_weights

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
NAME_PATTERN = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` durable (directories are fsynced through a read-only fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` as a whole or not at all: temporary name in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _step_of(path: Path) -> int | None:
    match = NAME_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories (with meta.json), oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names; if that file is missing or stale, the newest complete one."""
    latest = run_dir / CHECKPOINTS_DIR / LATEST_FILE
    if latest.is_file():
        name = latest.read_text().strip()
        candidate = run_dir / CHECKPOINTS_DIR / name
        if NAME_PATTERN.match(name) and (candidate / META_FILE).is_file():
            return candidate
    complete = list_checkpoints(run_dir)
    return complete[-1] if complete else None


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    spec: dict[str, Any],
    keep: int,
) -> Path:
    """Write step-{step}/ atomically, point `latest` at it, delete all but the newest `keep`."""
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}"
    if tmp.exists():  # left by a crash mid-save
        shutil.rmtree(tmp)
    tmp.mkdir()

    save_weights(model, tmp / WEIGHTS_FILE)
    _fsync_file(tmp / WEIGHTS_FILE)
    torch.save(state, tmp / STATE_FILE)
    _fsync_file(tmp / STATE_FILE)
    meta = {"step": step, "time": time.time(), "spec": spec}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _fsync_file(tmp / META_FILE)
    fsync_dir(tmp)

    final = root / name
    if final.exists():
        # Saving the same step again (e.g. a stop right after a resume): move the old one aside first,
        # since a directory cannot be renamed over a non-empty one.
        stale = root / f".old-{name}"
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / LATEST_FILE, name + "\n")
    prune(run_dir, keep)
    return final


def prune(run_dir: Path, keep: int) -> None:
    """Delete all complete checkpoints but the newest `keep`."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    fsync_dir(run_dir / CHECKPOINTS_DIR)


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a checkpoint; never unpickles arbitrary objects."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint / STATE_FILE} does not hold a training state")
    return state


def read_meta(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / META_FILE).read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{checkpoint / META_FILE} is not a JSON object")
    return meta
