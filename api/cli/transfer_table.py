"""How `vitq transfer` shows a transfer: the paper's table in a terminal (accuracies in %, a mean line), and a
wait for its children that prints a line whenever their counts change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from api.cli.exit_codes import EXIT_BY_STATUS, EXIT_OK

PENDING = "-"  # a cell whose child has not succeeded (yet)
POLL_SECONDS = 2.0


def render(transfer: dict[str, Any]) -> str:
    """The table as aligned text: a row per dataset, a column per metric, then the mean."""
    table = transfer["table"]
    keys = [column["key"] for column in table["columns"]]
    header = ["dataset", *(column["label"] for column in table["columns"])]
    lines = [[row["dataset"], *(_percent(row["values"][key]) for key in keys)] for row in table["rows"]]
    lines.append(["mean", *(_percent(table["mean"][key]) for key in keys)])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def _percent(value: float | None) -> str:
    return PENDING if value is None else f"{100 * value:.1f}"


def counts(transfer: dict[str, Any]) -> str:
    """Its children counted by state, e.g. "1 running, 3 succeeded"."""
    return ", ".join(f"{n} {status}" for status, n in sorted(transfer["status_counts"].items()))


def counts_line(transfer: dict[str, Any]) -> str:
    return f"transfer {transfer['id']}: {counts(transfer)}"


def wait(
    get: Callable[[], dict[str, Any]], out: TextIO, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Poll until every child has finished; a line each time the counts change."""
    last = ""
    while True:
        transfer = get()
        line = counts_line(transfer)
        if line != last:
            print(line, file=out, flush=True)
            last = line
        if transfer["finished"]:
            return transfer
        sleep(POLL_SECONDS)


def exit_code(transfer: dict[str, Any]) -> int:
    """0 when every child succeeded; else the exit code of the worst child's state (failed before cancelled)."""
    worst = [status for status in ("failed", "cancelled", "pruned") if transfer["status_counts"].get(status)]
    return EXIT_BY_STATUS[worst[0]] if worst else EXIT_OK
