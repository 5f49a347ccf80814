"""RUN_DIR/metrics.jsonl (one JSON object per line, flushed line by line) and the console progress line."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from vit.rundir import METRICS_FILE, metrics_line


class MetricsLog:
    """Appends {"step", "time", **metrics} lines; a disabled log (ranks other than 0) writes nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self._file: IO[str] | None = None
        if enabled:
            self._file = open(run_dir / METRICS_FILE, "a")  # noqa: SIM115 (held open for the whole run)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        # One write per complete line: a reader following the file never sees half a record as final.
        self._file.write(metrics_line(step, metrics))
        self._file.flush()
        print(progress_line(step, self.total_steps, metrics), flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """E.g. `step 120/300 loss 1.234 lr 8.0e-04 1234 img/s | val_top1 0.912`."""
    parts = [f"step {step}/{total}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.1e}")
    if "grad_norm" in metrics:
        parts.append(f"grad_norm {metrics['grad_norm']:.3f}")
    if "images_per_s" in metrics:
        parts.append(f"{metrics['images_per_s']:.0f} img/s")
    if "epoch" in metrics:
        parts.append(f"epoch {metrics['epoch']:.2f}")
    evals = [f"{key} {value:.4f}" for key, value in metrics.items() if key.startswith(("val_", "few_shot_"))]
    if evals:
        parts.append("| " + " ".join(evals))
    return " ".join(parts)
