"""Private PostgreSQL and Redis servers for tests that break them on purpose (outages, chaos).

The machine's shared servers (PostgreSQL on 5432, Redis on 6379) must never be stopped: other tests and other
people use them. A test that needs to stop, restart or freeze its database or broker starts its own here, on a
spare port in a temporary directory, and gets handles to do so:

    with private_postgres() as pg, private_redis() as broker:
        app_settings = Settings(database_url=pg.url, broker_url=broker.url, ...)
        pg.stop()        # `pg_ctl stop -m immediate`: connections die, new ones are refused
        pg.start()       # the same data directory and port again
        with pg.frozen():  # SIGSTOP of the server and its backends: connections hang, nothing answers
            ...
        broker.stop(); broker.start(); broker.freeze(); broker.thaw()

Both are torn down (and their directories removed) on exit, whatever state the test left them in. PostgreSQL
refuses to run as root: when the tests run as root, initdb/pg_ctl run as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

POSTGRES_BIN = Path(os.environ.get("VITQ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
POSTGRES_USER = "postgres"  # the OS account that runs the server when the tests run as root
DATABASE = "vitq"


def spare_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick; another process could take it before us,
    which the server's start would then report)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc (PostgreSQL's backends each start their own session, so
    signalling the postmaster's process group would miss them)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            children.append(int(entry.name))
    return children


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own. `url` points at an empty database `vitq` on it."""

    port: int
    directory: Path
    _frozen: list[int] = field(default_factory=list)
    also_listen: str | None = None  # another address to listen on (reached from network namespaces)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def start(self) -> None:
        options = (
            f"-c port={self.port} -c listen_addresses={','.join(filter(None, ['127.0.0.1', self.also_listen]))} "
            f"-c unix_socket_directories={self.directory} "
            # A stop kills the server, never the machine: what reached the kernel survives, so fsync may go. A
            # commit must still reach the kernel before it returns (synchronous_commit stays on), or a stop
            # right after it would lose a row the client was told is stored.
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        log = str(self.directory / "server.log")
        _run_as_postgres(
            [
                str(POSTGRES_BIN / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                log,
                "-o",
                options,
            ]
        )

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as clients can tell: their connections are cut without goodbye."""
        self.thaw()  # a stopped process would not hear the shutdown signal
        _run_as_postgres(
            [str(POSTGRES_BIN / "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)]
        )

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server and every backend: open connections and new connects hang (a hung host, not a
        refused connection)."""
        postmaster = self.postmaster_pid
        pids = [postmaster]
        os.kill(postmaster, signal.SIGSTOP)  # first, so it forks no new backend while we stop the others
        pids += _children(postmaster)
        _signal_all(pids[1:], signal.SIGSTOP)
        self._frozen = pids

    def thaw(self) -> None:
        _signal_all(self._frozen, signal.SIGCONT)
        self._frozen = []

    @contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def log(self) -> str:
        """The server's log (for assertion messages)."""
        return (self.directory / "server.log").read_text(errors="replace")


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


def _run_as_postgres(command: list[str]) -> None:
    subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=120)


@contextmanager
def private_postgres(also_listen: str | None = None) -> Iterator[PrivatePostgres]:
    """initdb + pg_ctl start in a new temporary directory on a spare port; the database `vitq` created; the
    server stopped and the directory removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="vitq-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, POSTGRES_USER, POSTGRES_USER)
    server = PrivatePostgres(port=spare_port(), directory=directory, also_listen=also_listen)
    try:
        initdb = [
            str(POSTGRES_BIN / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            POSTGRES_USER,
            "-A",
            "trust",
        ]
        _run_as_postgres([*initdb, "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"])
        if also_listen is not None:  # initdb trusts loopback only; the other address's subnet too
            with (server.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet trust\n")
        server.start()
        admin = create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        finally:
            admin.dispose()
        yield server
    finally:
        server.thaw()
        if (server.data_dir / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(
                    [str(POSTGRES_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(server.data_dir)]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, no persistence. `url` is its database 0."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    also_listen: str | None = None  # another address to listen on (reached from network namespaces)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        listen = ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.also_listen is not None:  # protected mode refuses every client not on loopback
            listen += [self.also_listen, "--protected-mode", "no"]
        no_persistence = ["--save", "", "--appendonly", "no"]
        files = ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(
            ["redis-server", *listen, *no_persistence, *files],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not listen on {self.port} within 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL: clients see their connections reset, like a crashed broker; queued messages are lost."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a frozen server must not outlive us
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGCONT)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def private_redis(also_listen: str | None = None) -> Iterator[PrivateRedis]:
    """redis-server on a spare port in a new temporary directory; killed and the directory removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="vitq-redis-"))
    server = PrivateRedis(port=spare_port(), directory=directory, also_listen=also_listen)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
