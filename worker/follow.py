"""Follow metrics.jsonl incrementally: read only new bytes, leave a partial last line for the next read."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from api.lifecycle import MetricRow

log = logging.getLogger(__name__)
READ_CHUNK_BYTES = 8 * 1024 * 1024  # bounds memory per read when catching up on a long file
RESERVED_KEYS = ("step", "time")


class MetricsFollower:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.last_step = 0

    def read_new(self) -> list[MetricRow]:
        """Metric points from complete lines appended since the last call (at most one chunk of bytes)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(READ_CHUNK_BYTES)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        points: list[MetricRow] = []
        for line in data[: end + 1].decode("utf-8", errors="replace").splitlines():
            points.extend(self._parse(line))
        return points

    def _parse(self, line: str) -> list[MetricRow]:
        if not line.strip():
            return []
        try:
            record = json.loads(line)
            step = int(record["step"])
            time = float(record["time"])
        except (ValueError, KeyError, TypeError):
            log.warning("skipping a malformed metrics line in %s: %.200s", self.path, line)
            return []
        self.last_step = max(self.last_step, step)
        return [
            MetricRow(str(name).replace("\x00", "")[:64], step, float(value), time)
            for name, value in record.items()
            if name not in RESERVED_KEYS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ]
