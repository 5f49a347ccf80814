"""A job's train.log held to its owner's max_log_bytes (api/core/limits.py).

The trainer's output comes through a pipe; whole lines are appended until the file would pass the limit, then one
line says so and the rest is read and dropped: the trainer never blocks on a full pipe, so the job trains on. The
limit counts the whole file, every attempt's part, so a restarted job adds its header and this notice only. The
last lines dropped stay in memory: a failure's message still shows the trainer's last words.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path
from typing import IO, BinaryIO

from vit.rundir import LOG_TAIL_LINES

CHUNK_BYTES = 64 * 1024
MAX_LINE_BYTES = 64 * 1024  # output without a newline for this long is written (or dropped) as it is
JOIN_SECONDS = 10.0  # after the trainer exits: a process it left behind may still hold the pipe open


def notice(limit: int) -> bytes:
    return (
        f"=== vitq: train.log reached its limit of {limit:,} bytes (max_log_bytes): the rest of this attempt's "
        "output is not kept; training goes on ===\n"
    ).encode()


class CappedLog:
    """Copies `source` (the trainer's stdout and stderr) into `path` on a thread of its own, up to `limit` bytes."""

    def __init__(self, source: IO[bytes], path: Path, limit: int) -> None:
        self.source, self.path, self.limit = source, path, limit
        self.capped = False
        self.dropped: deque[bytes] = deque(maxlen=LOG_TAIL_LINES)
        self._thread = threading.Thread(target=self._copy, name=f"log-cap {path}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait until everything the trainer wrote has been copied or dropped."""
        self._thread.join(JOIN_SECONDS)

    def dropped_lines(self) -> list[str]:
        return [line.decode("utf-8", errors="replace").rstrip("\n") for line in self.dropped]

    def _copy(self) -> None:
        fd = self.source.fileno()
        with self.path.open("ab", buffering=0) as out:  # append: the file's end, after earlier attempts
            size = out.tell()
            pending = b""
            while chunk := os.read(fd, CHUNK_BYTES):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    size = self._line(out, line + b"\n", size)
                if len(pending) >= MAX_LINE_BYTES:
                    size, pending = self._line(out, pending, size), b""
            if pending:
                self._line(out, pending, size)
        self.source.close()

    def _line(self, out: BinaryIO, line: bytes, size: int) -> int:
        if not self.capped and size + len(line) <= self.limit:
            out.write(line)
            return size + len(line)
        if not self.capped:
            self.capped = True
            out.write(notice(self.limit))
        self.dropped.append(line)
        return size
