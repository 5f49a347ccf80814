"""Saving and loading checkpoints (the torch side); their names, layout and discovery belong to vit.rundir.

A checkpoint is assembled in a temporary directory (each file fsynced, meta.json
last) and renamed into place, so a reader sees either no checkpoint or a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit.rundir import (
    EMA_WEIGHTS_FILE,
    LATEST_FILE,
    META_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    checkpoint_name,
    checkpoints_root,
    complete_checkpoints,
    fsync_dir,
    read_json_object,
)
from vit.weights import save_weights


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    spec: dict[str, Any],
    keep: int,
    ema: nn.Module | None = None,
) -> Path:
    """Write step-{step}/ atomically, point `latest` at it, delete all but the newest `keep`. `ema`: the
    moving average of the weights, saved next to them in the same format."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}"
    if tmp.exists():  # left by a crash mid-save
        shutil.rmtree(tmp)
    tmp.mkdir()

    for module, file_name in ((model, WEIGHTS_FILE), (ema, EMA_WEIGHTS_FILE)):
        if module is not None:
            save_weights(module, tmp / file_name)
            _fsync_file(tmp / file_name)
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
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    fsync_dir(checkpoints_root(run_dir))


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a checkpoint; never unpickles arbitrary objects."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint / STATE_FILE} does not hold a training state")
    return state


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return read_json_object(checkpoint / META_FILE)
