"""The launcher dies with its worker: a SIGKILLed worker leaves no trainer running beside the job's next runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worker import log_cap
from worker.launch import Trainer, trainer_command, trainer_env

# A stand-in for the trainer: it records the SIGTERM it gets, as the real one checkpoints on it.
TRAINER = textwrap.dedent(
    """
    import os, signal, sys, time
    def on_term(*_):
        # Renamed into place: the test must never read the marker between its creation and its write.
        with open(sys.argv[1] + ".part", "w") as part:
            part.write("terminated")
        os.replace(sys.argv[1] + ".part", sys.argv[1])
        sys.exit(75)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(120)
    """
)

# A stand-in for the worker: it launches the trainer exactly as the supervisor does, then waits to be killed.
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from worker.launch import Trainer
    trainer = Trainer([sys.executable, "-c", sys.argv[1], sys.argv[2]], {}, Path(sys.argv[3]))
    print(trainer.process.pid, flush=True)
    time.sleep(120)
    """
)


def test_trainer_gets_sigterm_when_the_worker_is_killed(tmp_path: Path) -> None:
    marker, log = tmp_path / "marker", tmp_path / "train.log"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, TRAINER, str(marker), str(log)], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    trainer_pid = int(worker.stdout.readline())
    deadline = time.monotonic() + 30
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "terminated"
    time.sleep(0.5)
    assert (
        not Path(f"/proc/{trainer_pid}").exists()
        or "Z" in Path(f"/proc/{trainer_pid}/stat").read_text().split()[2]
    )


# Modules a user could leave in the directory a worker is started from; each leaves a mark if it is imported.
SHADOWS = ("csv", "yaml", "sitecustomize", "vit/__init__")


@pytest.mark.parametrize("procs", [1, 2], ids=["trainer", "torchrun"])
def test_the_trainer_imports_nothing_from_the_workers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, procs: int
) -> None:
    started_in, run_dir, marks = tmp_path / "home", tmp_path / "run", tmp_path / "imported"
    for name in SHADOWS:
        module = started_in / f"{name}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(f"open({str(marks)!r}, 'a').write({name!r} + '\\n')\n")
    run_dir.mkdir()
    monkeypatch.chdir(started_in)  # the worker's working directory ...
    monkeypatch.setenv("PYTHONPATH", ".")  # ... even when its environment names it
    spec = run_dir / "missing-spec.yaml"  # the real trainer imports everything, then refuses the spec
    env = {**trainer_env(procs), "OMP_NUM_THREADS": "1"}
    trainer = Trainer(
        trainer_command(spec, run_dir, procs, attempt=1), env, run_dir / "train.log", cwd=run_dir
    )
    assert trainer.process.wait(timeout=120) != 0
    assert not marks.exists(), marks.read_text()
    assert str(spec) in (run_dir / "train.log").read_text()  # the real vit.train ran and named its input


# Prints more than a pipe holds (64 KiB) without ever waiting: a log cap that stopped reading would block it.
CHATTY = "import sys\nfor i in range(20_000):\n    print(f'line {i:05d}', flush=i % 1000 == 0)\nsys.exit(3)\n"


def test_a_capped_log_keeps_whole_lines_to_its_limit_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_bytes(b"=== attempt 1 ===\n")  # the supervisor's header counts: the limit is the file's
    trainer = Trainer([sys.executable, "-c", CHATTY], {}, log, log_limit=1000)
    assert trainer.process.wait(timeout=60) == 3
    assert trainer.poll() == 3  # and its output is all read
    kept = log.read_text().splitlines(keepends=True)
    assert kept[1:-1] == [f"line {i:05d}\n" for i in range(len(kept) - 2)]
    assert len("".join(kept[:-1])) <= 1000 < len("".join(kept[:-1])) + len("line 00000\n")
    assert kept[-1] == log_cap.notice(1000).decode()
    # A failure's message still shows the trainer's last lines: they were dropped from the file, not lost.
    tail, _ = trainer.tail(0)
    assert tail.splitlines()[-1] == "line 19999"
    # Another attempt on the full file adds nothing of the trainer's but the notice.
    again = Trainer([sys.executable, "-c", "print('more')"], {}, log, log_limit=1000)
    assert again.process.wait(timeout=60) == 0 and again.poll() == 0
    assert log.read_text() == "".join(kept) + log_cap.notice(1000).decode()
