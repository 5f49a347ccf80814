"""The worker container's liveness check: a worker of this container (its hostname) is alive in the worker
registry (a heartbeat younger than the lease, not retired) and, on a networked broker, holds an established TCP
connection to the broker's port. (Celery's `inspect ping` cannot serve: the solo pool answers no remote-control
message while it supervises a training job.) Exit 0 alive, 1 not, with the reason on stdout."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from api.core import workers
from api.core.db import make_engine
from api.core.settings import get_settings

ESTABLISHED = "01"
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


def registered_alive(host: str) -> bool:
    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            live = workers.live(session=session, lease_seconds=settings.lease_seconds)
            return any(worker.host == host for worker in live)
    finally:
        engine.dispose()


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
    host = socket.gethostname()
    if not registered_alive(host):
        print(f"no live worker of host {host} in the registry")
        return 1
    broker = urlsplit(get_settings().resolved_broker_url)
    port = broker.port or DEFAULT_PORTS.get(broker.scheme.split("+")[0])
    if port is not None and not connected_to_port(port):
        print(f"the worker holds no connection to the broker's port {port}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
