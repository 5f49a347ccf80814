"""Benchmark of the full log view's reads (issue 23, item 13; not a test): a train.log of SIZE_MB of progress
lines (plus one 5 MB line without a newline break, a runaway progress bar) is paged, searched and counted the way
GET /jobs/{id}/logs/lines and /logs/search read it (api/server/log_files.py). Prints the median of REPEATS
runs of each, with the file in the page cache. Target: a page or a search of a 100 MB log under 1 s.

    .venv/bin/python bench/logs.py [--size-mb 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.server.log_files import read_page, search  # noqa: E402

LINE = "step {i}/1000000 loss 2.3026 lr 4.0e-04 grad_norm 0.894 1238 img/s epoch 0.29 | worker ok\n"


def write_log(path: Path, size_mb: int) -> int:
    """Progress lines up to `size_mb`, one huge line in the middle and an "out of memory" line near the end."""
    lines = 0
    with path.open("w") as file:
        while file.tell() < size_mb * 2**20:
            lines += 1
            if lines == 500_000:
                file.write("x" * 5 * 2**20 + "\n")
            elif lines == 900_000:
                file.write("RuntimeError: CUDA out of memory\n")
            else:
                file.write(LINE.format(i=lines))
    return lines


def timed(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "train.log"
        lines = write_log(path, args.size_mb)
        print(f"log: {path.stat().st_size / 2**20:.0f} MB, {lines:,} lines")
        cases: dict[str, Callable[[], object]] = {
            "page 1 (500 lines)": lambda: read_page(path, 1, 500),
            "page at the middle": lambda: read_page(path, lines // 2, 500),
            "last page": lambda: read_page(path, lines - 499, 500),
            "search, a rare line (1 match)": lambda: search(
                path, "out of memory", match_case=False, limit=200
            ),
            "search, every line (stops at 200)": lambda: search(path, "loss", match_case=False, limit=200),
            "search, no match": lambda: search(path, "no such text", match_case=True, limit=200),
        }
        for name, run in cases.items():
            print(f"{name:36s} {timed(run, args.repeats) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
