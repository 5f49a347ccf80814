"""Every combination of compose files the README gives, as Compose itself reads it (`docker compose config`):
interpolation, `extends`, `!reset` and profiles included. Skipped without Docker Compose v2."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
COMBINATIONS = [
    ["-f", "docker-compose.yml"],
    ["-f", "docker-compose.yml", "--profile", "monitoring"],
    ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "--profile", "gpus-4"],
    ["-f", "docker-compose.yml", "-f", "docker-compose.head.yml"],
    ["-f", "docker-compose.worker.yml"],
    ["-f", "docker-compose.worker.yml", "-f", "docker-compose.worker.gpu.yml"],
]


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not compose_available(), reason="no docker compose v2")


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(f for f in files if f != "-f"))
def test_compose_reads_it(files: list[str], tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text(
        (CHECKOUT / ".env.example").read_text()
        + f"VITQ_ADMIN_TOKEN={secrets.token_hex(32)}\nVITQ_HEAD_HOST=10.0.0.1\nVITQ_HEAD_BIND=10.0.0.1\n"
        + f"POSTGRES_PASSWORD={secrets.token_hex(12)}\nREDIS_PASSWORD={secrets.token_hex(12)}\n"
        + "VITQ_STORAGE_MOUNT=/mnt/vitq-storage\nVITQ_DATA=/mnt/vitq-data\n"
    )
    done = subprocess.run(
        ["docker", "compose", "--env-file", str(env), *files, "config", "--format", "json"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_missing_password_is_refused(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text(f"VITQ_ADMIN_TOKEN={secrets.token_hex(32)}\nREDIS_PASSWORD=x\n")
    done = subprocess.run(
        ["docker", "compose", "--env-file", str(env), "-f", "docker-compose.yml", "config"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("files", "variable"),
    [(["-f", "docker-compose.yml"], "POSTGRES_PASSWORD"), (["-f", "docker-compose.yml", "-f", "docker-compose.head.yml"], "VITQ_HEAD_BIND")],
    ids=["example-passwords", "head-bind"],
)  # fmt: skip
def test_the_example_env_alone_is_refused(tmp_path: Path, files: list[str], variable: str) -> None:
    """.env.example as copied: no password to start with, and no head published on an address nobody named."""
    env = tmp_path / "env"
    passwords = "" if variable == "POSTGRES_PASSWORD" else "POSTGRES_PASSWORD=a1\nREDIS_PASSWORD=b2\n"
    env.write_text(
        (CHECKOUT / ".env.example").read_text() + f"VITQ_ADMIN_TOKEN={secrets.token_hex(32)}\n" + passwords
    )
    done = subprocess.run(
        ["docker", "compose", "--env-file", str(env), *files, "config"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and variable in done.stderr, done.stderr
