"""The worker `vitq serve` runs beside the API: a `python -m worker` process, started again if it dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from api.core.parent_death import term_when_parent_dies

RESTART_DELAY_S = (1.0, 5.0, 30.0)  # waits before each restart in a row (a worker that keeps dying)
HEALTHY_AFTER_S = 60.0  # a worker that ran this long resets the delay
# More than the worker gives its trainer to save a checkpoint after SIGTERM (worker.supervisor's
# STOP_GRACE_SECONDS): killed sooner, the worker could not hand its job back, which would wait out a lease.
STOP_GRACE_SECONDS = 90.0


class LocalWorker:
    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "worker"]
        self.stopping = threading.Event()
        self.restarts = 0
        self.process = self._start()
        self.watcher = threading.Thread(target=self._watch, name="vitq-local-worker", daemon=True)
        self.watcher.start()

    def _start(self) -> subprocess.Popen[bytes]:
        # The worker stops with serve, even when serve is killed and cannot stop it (parent-death signal).
        return subprocess.Popen(self.command, preexec_fn=term_when_parent_dies)

    def _watch(self) -> None:
        failures_in_a_row = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            failures_in_a_row = 0 if time.monotonic() - started > HEALTHY_AFTER_S else failures_in_a_row + 1
            delay = (
                RESTART_DELAY_S[min(failures_in_a_row, len(RESTART_DELAY_S)) - 1]
                if failures_in_a_row
                else 0.0
            )
            print(f"vitq: the worker exited with code {code}; restarting it in {delay:.0f} s", flush=True)
            if self.stopping.wait(delay):
                return
            self.process = self._start()
            self.restarts += 1

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        self.stopping.set()
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
