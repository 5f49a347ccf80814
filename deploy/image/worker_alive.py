"""The worker container's liveness check: a `python -m worker` process runs and, on a networked broker, holds
an established TCP connection to the broker's port. (Celery's `inspect ping` cannot serve: the solo pool
answers no remote-control message while it supervises a training job.) Exit 0 alive, 1 not."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

ESTABLISHED = "01"
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


def worker_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended while we looked
        if b"-m" in args and b"worker" in args:
            return True
    return False


def connected_to_port(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == ESTABLISHED:
                return True
    return False


def main() -> int:
    if not worker_running():
        print("no `python -m worker` process")
        return 1
    broker = urlsplit(os.environ.get("VITQ_BROKER_URL", ""))
    port = broker.port or DEFAULT_PORTS.get(broker.scheme.split("+")[0])
    if port is not None and not connected_to_port(port):
        print(f"the worker holds no connection to the broker's port {port}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
