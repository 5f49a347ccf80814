"""A `docker compose` project of the repository's compose files under a unique name, with its own .env (random
passwords, a free port), and the host's local package index served to the image build when pip's own
configuration names one (an offline machine: otherwise the build reaches PyPI as a user's would)."""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]


def docker_answers() -> str | None:
    """None when a Docker engine with Compose v2 answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker command"
    for probe in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(probe)}` did not answer within 20 s"
        if done.returncode != 0:
            return f"`{' '.join(probe)}` failed: {(done.stderr or done.stdout).strip()[:200]}"
    return None


# local-docker.sh's stand-ins (Debian bookworm inside) under the pinned names the compose files use.
STAND_IN_TAGS = {
    "python:3.11-slim": "python:3.11-slim-bookworm",
    "postgres:16": "postgres:16-bookworm",
    "redis:7": "redis:7-bookworm",
}
STAND_IN_LABEL = "local-docker.stand-in"


def tag_stand_ins() -> None:
    """Give each local stand-in the pinned name when no real image has it (an offline machine)."""
    for stand_in, pinned in STAND_IN_TAGS.items():
        if subprocess.run(["docker", "image", "inspect", pinned], capture_output=True).returncode == 0:
            continue
        label = subprocess.run(
            [
                "docker",
                "image",
                "inspect",
                "-f",
                f'{{{{ index .Config.Labels "{STAND_IN_LABEL}" }}}}',
                stand_in,
            ],
            capture_output=True,
            text=True,
        )
        if label.returncode == 0 and label.stdout.strip() not in ("", "<no value>"):
            subprocess.run(["docker", "tag", stand_in, pinned], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_pip_indexes() -> list[Path]:
    """Directories of file:// indexes in pip's configuration (the `simple/` trees), in pip's order."""
    done = subprocess.run(["pip3", "config", "list"], capture_output=True, text=True, check=False)
    found: list[Path] = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(("index-url", "extra-index-url")):
            for url in value.strip("'\"").split():
                if url.startswith("file://") and Path(url.removeprefix("file://")).is_dir():
                    found.append(Path(url.removeprefix("file://")))
    return found


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge, which build containers reach. Some engines leave the
    Gateway out of the bridge's IPAM config; the bridge then has its default, the subnet's first address."""
    done = subprocess.run(
        ["docker", "network", "inspect", "bridge", "-f", "{{json (index .IPAM.Config 0)}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(done.stdout)
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(ipaddress.ip_network(config["Subnet"]).network_address + 1)


@contextmanager
def served_indexes(indexes: list[Path], pip_conf: Path) -> Iterator[dict[str, str]]:
    """Serve each index's parent folder over HTTP on the bridge, and write the pip.conf (the build's secret) that
    makes pip use them first (PyPI after them for anything they lack); the settings that pass it."""
    if not indexes:
        yield {}
        return
    host = bridge_gateway()
    # The indexes link their files as ../../files/...: serve each index's parent folder, nothing else.
    handler = partial(
        _IndexHandler, allowed=tuple(index.parent.resolve() for index in indexes), directory="/"
    )
    server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://{host}:{server.server_address[1]}"
    urls = [f"{base}{index}" for index in indexes]
    try:
        extra = " ".join([*urls[1:], "https://pypi.org/simple"])
        pip_conf.write_text(
            f"[global]\nindex-url = {urls[0]}\nextra-index-url = {extra}\ntrusted-host = {host}\n"
        )
        yield {"VITQ_PIP_CONF": str(pip_conf)}
    finally:
        server.shutdown()
        server.server_close()


class _IndexHandler(SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, allowed: tuple[Path, ...], **kwargs: Any) -> None:
        self.allowed = allowed
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        local = Path(super().translate_path(path)).resolve()
        return str(local) if any(local.is_relative_to(root) for root in self.allowed) else "/nonexistent"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Project:
    name: str
    env_file: Path
    api_url: str
    headers: dict[str, str]  # the bootstrap admin's token
    files: tuple[str, ...] = ("docker-compose.yml",)

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.name, "--env-file", str(self.env_file)]
        for file in self.files:
            command += ["-f", str(CHECKOUT / file)]
        done = subprocess.run(
            [*command, *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def containers(self, service: str) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json", service).stdout.strip()
        if not out:
            return []
        # Compose prints one JSON object per line (2.21+) or one array (older).
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines()]
        return [row for row in rows if row["Service"] == service]

    def container_ids(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout


@contextmanager
def compose_project(tmp_path: Path, **settings: str) -> Iterator[Project]:
    """Down with its volumes afterwards, whatever happened."""
    tag_stand_ins()
    port = free_port()
    with served_indexes(local_pip_indexes(), tmp_path / "pip.conf") as pip_settings:
        values = {
            "POSTGRES_PASSWORD": secrets.token_hex(12),
            "REDIS_PASSWORD": secrets.token_hex(12),
            "VITQ_API_ADDRESS": f"127.0.0.1:{port}",
            "VITQ_ADMIN_TOKEN": secrets.token_urlsafe(32),
            **pip_settings,
            **settings,
        }
        env_file = tmp_path / "compose.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        project = Project(
            name=f"vitq-test-{secrets.token_hex(4)}",
            env_file=env_file,
            api_url=f"http://127.0.0.1:{port}",
            headers={"authorization": f"Bearer {values['VITQ_ADMIN_TOKEN']}"},
        )
        try:
            yield project
        finally:
            project.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)
