"""Watch /proc for training processes: how many trainers of each job ran at the same moment.

A trainer is a rank-0 `python -m vit.train SPEC --out RUN_DIR` process (torchrun's launcher and the other
ranks are not counted) that holds RUN_DIR/metrics.jsonl open: it does from the moment it may write the run
directory's history until it exits. A trainer still waiting for its predecessor to go is not one yet. Two of
them with the same run directory is the split-brain the fencing must prevent. Every process on the machine is
looked at, not only the workers' descendants, so an orphan counts too.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vit.rundir import METRICS_FILE

SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class TrainerProcess:
    pid: int
    job_id: int


def _read_args(pid_dir: Path) -> list[str]:
    try:
        return pid_dir.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # exited while we looked, or not ours to read
        return []


def _is_rank_zero(pid_dir: Path) -> bool:
    """Alone (no RANK) or rank 0 under torchrun."""
    try:
        environ = pid_dir.joinpath("environ").read_bytes().split(b"\0")
    except OSError:
        return False
    rank = next((entry[5:] for entry in environ if entry.startswith(b"RANK=")), b"0")
    return rank == b"0"


def _is_alive(pid_dir: Path) -> bool:
    """Running, sleeping or stopped (a SIGSTOPped trainer still holds its run directory); not a zombie."""
    try:
        state = pid_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _writes_metrics(pid_dir: Path, run_dir: str) -> bool:
    """Holds RUN_DIR/metrics.jsonl open, or a file of that name since replaced (a successor's rewrite): a
    trainer writing into a replaced file still runs in the directory."""
    metrics = os.path.realpath(f"{run_dir}/{METRICS_FILE}")
    targets = (metrics, f"{metrics} (deleted)")
    try:
        descriptors = list(pid_dir.joinpath("fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in targets:
                return True
        except OSError:  # closed while we looked
            continue
    return False


def trainer_processes(jobs_root: Path, *, writing: bool = True) -> list[TrainerProcess]:
    """Live rank-0 trainers of run directories under `jobs_root` (STORAGE/jobs): those writing one, or with
    `writing=False` every one started, a trainer still waiting for its predecessor to go included."""
    found = []
    root = str(jobs_root)
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        args = _read_args(pid_dir)
        if "vit.train" not in args or "torch.distributed.run" in args or "--out" not in args:
            continue
        out = args[args.index("--out") + 1] if args.index("--out") + 1 < len(args) else ""
        parent, _, name = out.rstrip("/").rpartition("/")
        if parent != root or not name.isdigit():
            continue
        if not (_is_alive(pid_dir) and _is_rank_zero(pid_dir)):
            continue
        if not writing or _writes_metrics(pid_dir, out.rstrip("/")):
            found.append(TrainerProcess(pid=int(pid_dir.name), job_id=int(name)))
    return found


@dataclass
class TrainerSampler:
    """A thread that samples every SAMPLE_SECONDS until closed; use it as a context manager."""

    jobs_root: Path
    max_at_once: Counter[int] = field(default_factory=Counter)  # job id -> most trainers seen at one moment
    pids: dict[int, set[int]] = field(default_factory=dict)  # job id -> every trainer pid seen
    overlaps: list[str] = field(default_factory=list)  # when two ran at once, and which (for the message)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        by_job: dict[int, list[int]] = {}
        for trainer in trainer_processes(self.jobs_root):
            by_job.setdefault(trainer.job_id, []).append(trainer.pid)
        for job_id, pids in by_job.items():
            self.max_at_once[job_id] = max(self.max_at_once[job_id], len(pids))
            self.pids.setdefault(job_id, set()).update(pids)
            if len(pids) > 1:
                self.overlaps.append(f"{time.strftime('%H:%M:%S')} job {job_id}: trainers {sorted(pids)}")
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def __enter__(self) -> TrainerSampler:
        self._thread = threading.Thread(target=self._run, name="trainer-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def assert_never_two(self, job_id: int) -> None:
        """The job had a trainer, and never two at once (with the sampler's evidence in the message)."""
        assert self.samples > 0, "the sampler never ran"
        assert self.pids.get(job_id), f"job {job_id}: no trainer was ever sampled"
        assert self.max_at_once[job_id] <= 1, f"job {job_id}: two trainers ran at once: {self.overlaps[:5]}"
