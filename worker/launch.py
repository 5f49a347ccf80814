"""Start and stop the trainer: `torch.distributed.run` (or, for one process, the trainer itself) as a
subprocess in its own process group.

The worker process never imports torch's CUDA side: the launcher and the trainer processes own the devices.

The trainer imports nothing from a directory a user can write to: `python -m` would put its working directory
first on the import path (a `csv.py` in the directory the worker was started from would run inside every job),
so it runs in its run directory with PYTHONSAFEPATH (no working directory on the path, for torchrun's children
too) and a PYTHONPATH of one private directory that holds only `vit`, the package this worker runs.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from api.core.parent_death import term_when_parent_dies
from vit import rundir
from vit.data_roots import DATA_ROOTS_ENV
from worker import peak
from worker.log_cap import CappedLog


def trainer_command(spec_path: Path, run_dir: Path, procs_per_node: int, *, attempt: int) -> list[str]:
    # --attempt: the trainer obeys this attempt's lease file and waits for its predecessor's lock.
    # Absolute: the trainer runs in a working directory of its own.
    trainer = [
        "-m",
        "vit.train",
        str(spec_path.absolute()),
        "--out",
        str(run_dir.absolute()),
        "--attempt",
        str(attempt),
    ]
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


def trainer_env(
    procs_per_node: int, devices: Sequence[int] | None = None, *, data_roots: Sequence[Path] = ()
) -> dict[str, str]:
    """The trainer's environment; on a GPU worker (`devices` not None) it sees only the devices it holds (none
    for a CPU job), so jobs packed on one machine never share a device. `data_roots`: the only directories its
    dataset's files may resolve into (vit/data/confine.py)."""
    env = dict(os.environ)
    env[DATA_ROOTS_ENV] = os.pathsep.join(str(root) for root in data_roots)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONPATH"] = str(trainer_import_path())  # replaces the worker's own (PYTHONPATH=. is cwd again)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    # Without this each CPU process would start one thread per core and they would fight over the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs_per_node)))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach train.log as they are printed
    env.update(peak.trainer_env())  # the worker's calibrated peak, once measured (worker/peak.py)
    return env


@functools.cache
def trainer_import_path() -> Path:
    """A directory of this worker's own holding just a link to its `vit` package (found without importing it:
    the worker must not load torch), so the trainer runs the same code as the worker and nothing beside it."""
    spec = importlib.util.find_spec("vit")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the vit package is not importable by this worker")
    directory = Path(tempfile.mkdtemp(prefix="vitq-trainer-path-"))  # mode 0700
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    (directory / "vit").symlink_to(Path(next(iter(spec.submodule_search_locations))).resolve())
    return directory


class Trainer:
    """The launcher process and, through it, the training processes (which torchrun starts in sessions of
    their own, so signals to the launcher's group do not reach them directly)."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        ignore_signals: Sequence[int] = (),
        log_limit: int | None = None,
    ) -> None:
        """`log_limit`: the most bytes `log_path` may hold (the owner's max_log_bytes); None: the trainer writes
        to it directly, without a limit."""

        def prepare() -> None:
            term_when_parent_dies()
            for signum in ignore_signals:  # SIG_IGN survives exec: torchrun and the trainer inherit it
                signal.signal(signum, signal.SIG_IGN)

        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdout=log if log_limit is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=prepare,
            )
        self.capped_log = None
        if log_limit is not None:
            assert self.process.stdout is not None
            self.capped_log = CappedLog(self.process.stdout, log_path, log_limit)

    def poll(self) -> int | None:
        """The exit code once the trainer has exited and its output is all in the log (or dropped)."""
        code = self.process.poll()
        if code is not None and self.capped_log is not None:
            self.capped_log.join()
        return code

    def tail(self, start: int) -> tuple[str, int | None]:
        """The trainer's last output lines since byte `start` of the log, and the exit code of a training
        process that failed under torchrun (vit.rundir.log_tail); past the log limit, from the lines dropped."""
        if self.capped_log is not None and self.capped_log.capped:
            return rundir.tail_of(self.capped_log.dropped_lines())
        return rundir.log_tail(self.log_path, start)

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
