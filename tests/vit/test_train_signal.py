"""SIGTERM: the trainer saves a checkpoint at the current step, exits 75, and a rerun resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit.train import EXIT_INTERRUPTED

SPEC = {
    "kind": "pretrain",
    "model": TINY_MODEL,
    "data": SYNTHETIC,
    # Far more steps than the test waits for: it is always stopped mid-run.
    "train": {"steps": 100000, "batch_size": 16, "log_every": 1},
    "resources": {"device": "cpu"},
}


def start(spec: Path, run_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vit.train", str(spec), "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def terminate_after_first_metrics_line(proc: subprocess.Popen[str]) -> tuple[list[str], str]:
    """Send SIGTERM once the first `step ...` line is out; (stdout lines, stderr) after it exits."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return seen + out.splitlines(), err


def test_sigterm_checkpoints_the_current_step_and_a_rerun_resumes(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"

    first = start(spec, run_dir)
    lines, err = terminate_after_first_metrics_line(first)
    assert first.returncode == EXIT_INTERRUPTED, err
    stop_lines = [line for line in lines if line.startswith("stop requested")]
    assert len(stop_lines) == 1, lines
    step = int(stop_lines[0].rsplit(" ", 1)[1])
    assert 1 <= step < 100000
    name = f"step-{step:06d}"
    assert (run_dir / "checkpoints" / "latest").read_text() == name + "\n"
    meta = json.loads((run_dir / "checkpoints" / name / "meta.json").read_text())
    assert meta["step"] == step

    second = start(spec, run_dir)
    lines, err = terminate_after_first_metrics_line(second)
    assert second.returncode == EXIT_INTERRUPTED, err
    assert f"resumed from {name} (step {step})" in lines
    first_logged = next(line for line in lines if line.startswith("step "))
    assert first_logged.startswith(f"step {step + 1}/100000 "), lines
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    assert steps == list(range(1, len(steps) + 1))  # one line per step across both runs, no gap, no repeat
