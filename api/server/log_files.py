"""Reading a job's train.log (the launcher's stdout and stderr, written by the worker) from its run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


# The whole log, a page at a time, and searched: a 100 MB log is read in blocks, never held whole, and no line,
# however long (a progress bar that never printed a newline), is sent whole.
SCAN_BLOCK_BYTES = 1024 * 1024
MAX_LINE_BYTES = 2000  # of one line in a page or a search result; the rest is cut, and the line says so


@dataclass(frozen=True)
class LogPage:
    start: int  # the first line's number (1-based)
    lines: list[str]
    total_lines: int
    size_bytes: int


@dataclass(frozen=True)
class LogMatch:
    line: int  # 1-based, as LogPage numbers them
    text: str  # the line, or the part of it around the first match when it is longer than MAX_LINE_BYTES
    cut: bool


def read_page(path: Path, start: int, count: int) -> LogPage:
    """Lines start .. start + count - 1, each cut at MAX_LINE_BYTES, and how many lines the log has. Blocks
    outside the page are only counted (newlines), so a page costs one fast pass over the file."""
    end = start + count
    lines: list[str] = []
    number = 1  # the line the next byte belongs to
    current = bytearray()
    dropped = 0  # bytes of the current line beyond MAX_LINE_BYTES
    last = b"\n"
    size = 0
    with path.open("rb") as file:
        while block := file.read(SCAN_BLOCK_BYTES):
            size += len(block)
            last = block[-1:]
            newlines = block.count(b"\n")
            if number + newlines < start or number >= end:  # no byte of the page in this block
                number += newlines
                continue
            position = 0
            while position < len(block):
                newline = block.find(b"\n", position)
                stop = len(block) if newline == -1 else newline
                if start <= number < end:
                    keep = min(stop - position, max(0, MAX_LINE_BYTES - len(current)))
                    current += block[position : position + keep]
                    dropped += stop - position - keep
                if newline == -1:
                    break
                if start <= number < end:
                    lines.append(_shown(bytes(current), dropped))
                current, dropped = bytearray(), 0
                number += 1
                position = newline + 1
    total = number - 1 if last == b"\n" else number  # a last line without its newline yet counts
    if start <= total < end and last != b"\n":
        lines.append(_shown(bytes(current), dropped))
    return LogPage(start=start, lines=lines, total_lines=total, size_bytes=size)


def _shown(line: bytes, dropped: int) -> str:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    return f"{text} … ({dropped:,} more bytes)" if dropped else text


def search(path: Path, query: str, *, match_case: bool, limit: int) -> tuple[list[LogMatch], bool]:
    """The lines holding `query` as a literal substring (case-blind for ASCII letters unless `match_case`), the
    first `limit` of them, and whether there are more. The file is searched block by block with the previous
    block's last bytes kept, so a match across a block's edge, or in a line of any length, is found."""
    needle = query.encode()
    if not match_case:
        needle = needle.lower()
    overlap = len(needle) - 1
    found: list[tuple[int, int]] = []  # (line number, byte offset of its first match)
    more = False
    number = 1  # the line of the block's first byte
    offset = 0  # the block's first byte in the file
    tail = b""  # the previous block's last `overlap` bytes (compared form)
    with path.open("rb") as file:
        while not more and (block := file.read(SCAN_BLOCK_BYTES)):
            window = tail + (block if match_case else block.lower())
            line, counted = number, 0  # the line at byte `counted` of the block
            at = window.find(needle)
            while at != -1:
                in_block = max(
                    0, at - len(tail)
                )  # a match that began in the tail is on the block's first line
                line += block.count(b"\n", counted, in_block)
                counted = in_block
                if not found or found[-1][0] != line:
                    if len(found) == limit:
                        more = True
                        break
                    found.append((line, offset - len(tail) + at))
                newline = window.find(b"\n", at + len(needle))  # one entry per line: on to the next
                if newline == -1:
                    break
                at = window.find(needle, newline + 1)
            tail = window[-overlap:] if overlap else b""
            number += block.count(b"\n")
            offset += len(block)
        return [_match_at(file, line, position, len(needle)) for line, position in found], more


def _match_at(file: BinaryIO, line: int, position: int, length: int) -> LogMatch:
    """The line around a match at byte `position`, read from at most MAX_LINE_BYTES either side of it."""
    begin = max(
        0, position - MAX_LINE_BYTES - 1
    )  # one byte more: the newline ending the line before, if there
    wanted = position - begin + length + MAX_LINE_BYTES
    file.seek(begin)
    chunk = file.read(wanted)
    at = position - begin
    line_start = chunk.rfind(b"\n", 0, at) + 1
    newline = chunk.find(b"\n", at + length)
    line_stop = len(chunk) if newline == -1 else newline
    starts_before = line_start == 0 and begin > 0  # no newline within the bytes read: it began further back
    ends_after = newline == -1 and len(chunk) == wanted
    start, stop = line_start, line_stop
    if stop - start > MAX_LINE_BYTES:  # a long line: the part around the match
        start = max(start, at - MAX_LINE_BYTES // 4)
        stop = min(stop, start + MAX_LINE_BYTES)
    cut_before = starts_before or start > line_start
    cut_after = ends_after or stop < line_stop
    text = chunk[start:stop].decode("utf-8", errors="replace").rstrip("\r")
    shown = ("…" if cut_before else "") + text + ("…" if cut_after else "")
    return LogMatch(line=line, text=shown, cut=cut_before or cut_after)
