"""The launcher dies with its worker: a SIGKILLed worker leaves no trainer running beside the job's next runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
