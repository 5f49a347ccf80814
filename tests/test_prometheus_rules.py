"""deploy/prometheus with Prometheus' own checker: the configuration and rules are valid, and each alert fires
exactly when it should (deploy/prometheus/alerts_test.yml). Needs promtool (Debian: apt-get install prometheus);
skipped without it. tests/test_compose.py checks the same files' structure with PyYAML everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
PROMTOOL = os.environ.get("VITQ_PROMTOOL") or shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_config_is_valid(tmp_path: Path) -> None:
    # The config names the rules where the compose service mounts them; point it at the checkout's copy.
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/alerts.yml", str(PROMETHEUS / "alerts.yml")))
    checked = promtool("check", "config", str(local))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_fire_when_they_should() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
