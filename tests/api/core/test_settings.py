"""Settings that cannot work together are refused when the service starts, with what to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"lease_seconds": 3}, "set VITQ_LEASE_SECONDS to at least 15 or lower VITQ_HEARTBEAT_SECONDS"),
        ({"lease_seconds": 10, "heartbeat_seconds": 4}, "at least 12"),
        ({"heartbeat_seconds": 0}, "greater than 0"),
        ({"lease_seconds": 60, "reap_seconds": 90}, "lower VITQ_REAP_SECONDS"),
        ({"auth": "off", "bootstrap_admin_token": "x" * 40}, "the token would never be asked for"),
        ({"data_dir": "{home}/shared", "storage": "{home}/shared/runs"}, "outside the data directory"),
        (
            {"database_url": "postgresql+psycopg://vitq:change-me-postgres@postgres:5432/vitq"},
            "set POSTGRES_PASSWORD in .env",
        ),
        ({"broker_url": "redis://:change-me-redis@redis:6379/0"}, "set REDIS_PASSWORD in .env"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(
    tmp_path: Path, values: dict[str, Any], words: str
) -> None:
    values = {k: v.format(home=tmp_path) if isinstance(v, str) else v for k, v in values.items()}
    with pytest.raises(ValidationError, match=words):
        Settings(home=tmp_path, **values)


def test_the_edges_that_work_are_accepted(tmp_path: Path) -> None:
    Settings(home=tmp_path, lease_seconds=15, heartbeat_seconds=5, reap_seconds=15)
    Settings(home=tmp_path, auth="required", bootstrap_admin_token="x" * 40)
    Settings(
        home=tmp_path, data_dir=tmp_path / "data", storage=tmp_path / "data-runs"
    )  # a sibling, not inside


def test_vitq_serve_refuses_to_start_and_says_what_to_change(tmp_path: Path) -> None:
    env = {**os.environ, "VITQ_HOME": str(tmp_path), "VITQ_LEASE_SECONDS": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "serve"], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "vitq: VITQ_LEASE_SECONDS=3 is shorter than 3 heartbeats (VITQ_HEARTBEAT_SECONDS=5): every running job "
        "would lose its lease between two heartbeats; set VITQ_LEASE_SECONDS to at least 15 or lower "
        "VITQ_HEARTBEAT_SECONDS"
    ]
    assert not (tmp_path / "vitq.db").exists()  # refused before anything was made
