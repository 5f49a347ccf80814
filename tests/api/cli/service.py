"""Start the real embedded service (`vitq serve`: SQLite, the sqla+sqlite broker, one real worker) for a test
module, and the tiny specs those tests train. Shared by tests/cli and tests/browser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

VITQ = str(Path(sys.executable).with_name("vitq"))
# The `vitq` script imports the installed package, which may be another checkout (a shared virtual environment):
# the service under test must run this checkout's code, its worker and trainers included.
CHECKOUT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 90.0
T = TypeVar("T")


def tiny_spec(
    name: str,
    *,
    steps: int = 30,
    dataset: str = "data: {dataset: synthetic, synthetic_size: 256, num_workers: 0}",
) -> str:
    """Depth 1, width 32, 16 px images in 4 px patches: a few seconds of CPU training."""
    return f"""\
kind: pretrain
name: {name}
model: {{variant: Ti/4, image_size: 16, depth: 1, embed_dim: 32, num_heads: 2, mlp_dim: 64}}
{dataset}
optim: {{warmup_steps: 5}}
train: {{steps: {steps}, batch_size: 32, eval_every: 10, checkpoint_every: 10, log_every: 2}}
eval: {{few_shot: [1, 5], batch_size: 64}}
resources: {{device: cpu}}
"""


@dataclass(frozen=True)
class Service:
    url: str
    home: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `vitq ARGS` against this service; text output captured."""
        return subprocess.run(
            [VITQ, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(home: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITQ_")}  # the embedded default only
    env.update(VITQ_HOME=str(home), VITQ_URL=url, VITQ_MAX_ATTEMPTS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    return env


@contextmanager
def running_service(home: Path) -> Iterator[Service]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(home, url)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [VITQ, "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # teardown can reach the worker and its trainers as one group
        )
        try:
            wait_healthy(url, process, log_path)
            yield Service(url=url, home=home, env=env)
        finally:
            stop(process)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"vitq serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"vitq serve not healthy after {START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)  # serve stops its worker itself
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(predicate: Callable[[], T | None], timeout: float = 120.0, interval: float = 0.5) -> T:
    """Poll `predicate()` until it returns something truthy; that value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
