"""Reading a job's train.log (the launcher's stdout and stderr, written by the worker) from its run directory."""

from __future__ import annotations

import os
from pathlib import Path

BLOCK_BYTES = 64 * 1024
MAX_TAIL_BYTES = 16 * 1024 * 1024


def tail_lines(path: Path, count: int, end: int | None = None) -> str:
    """The last `count` lines (before byte `end`; default the end of the file), read backwards block by block: a
    long log is never read whole, and a log without newlines (a runaway progress bar) is cut at MAX_TAIL_BYTES."""
    blocks: list[bytes] = []
    newlines = read = 0
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END) if end is None else end
        # count + 1 newlines guarantee `count` whole lines (the last line may lack its newline).
        while position > 0 and newlines <= count and read < MAX_TAIL_BYTES:
            size = min(BLOCK_BYTES, position)
            position -= size
            file.seek(position)
            block = file.read(size)
            blocks.append(block)
            newlines += block.count(b"\n")
            read += size
    data = b"".join(reversed(blocks))
    lines = data.splitlines(keepends=True)[-count:]
    return b"".join(lines).decode("utf-8", errors="replace")
