"""Start and stop the trainer: `torch.distributed.run` (or, for one process, the trainer itself) as a
subprocess in its own process group.

The worker process never imports torch's CUDA side: the launcher and the trainer processes own the devices.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child between fork and exec must not load libraries or take import locks.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def term_when_parent_dies() -> None:
    """A `preexec_fn`: runs in the child between fork and exec. If the parent dies (even by SIGKILL), the
    kernel sends the child SIGTERM. The launcher forwards it to the trainers, which checkpoint and exit instead
    of running on as orphans beside the job's next runner; `vitq serve`'s worker shuts down."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def trainer_command(spec_path: Path, run_dir: Path, procs_per_node: int) -> list[str]:
    trainer = ["-m", "vit.train", str(spec_path), "--out", str(run_dir)]
    if procs_per_node == 1:
        # One process has nothing to rendezvous with: skipping the elastic agent saves its ~2.5 s torch import
        # from every job's start-up. The trainer runs as rank 0 of 1 either way.
        return [sys.executable, *trainer]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(procs_per_node),
        "--standalone",  # a private rendezvous on a free local port: jobs on one machine never collide
        *trainer,
    ]


def trainer_env(procs_per_node: int) -> dict[str, str]:
    env = dict(os.environ)
    # Without this each CPU process would start one thread per core and they would fight over the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs_per_node)))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach train.log as they are printed
    return env


class Trainer:
    """The launcher process and, through it, the training processes (which torchrun starts in sessions of
    their own, so signals to the launcher's group do not reach them directly)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=term_when_parent_dies,
            )

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        """SIGTERM to the launcher, which forwards it to the trainers: they checkpoint and exit."""
        _signal_group(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the launcher and every process below it, at once."""
        for pid in [*descendants(self.process.pid), self.process.pid]:
            _signal_group(pid, signal.SIGKILL)
        self.process.wait()


def _signal_group(pid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def descendants(pid: int) -> list[int]:
    """Processes below `pid`, from /proc (Linux); none elsewhere."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found
