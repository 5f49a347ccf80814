"""`vitq data check`: every shard of a packed dataset read back against its index, damage named per member.

Per shard: present, its size and sha256 as packed, its tar readable to the end, each image member where its
.idx says with the label the index says, and (decode=True) each image decodable. A damaged shard is reported
and the check goes on to the next, so one run lists all the damage before a job meets it at step 40,000.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

from vit.data.errors import DataError
from vit.data.shard_index import ShardEntry, read_index, read_members
from vit.data.shard_io import Location, open_location
from vit.data.shards import decode_rgb

# Problems listed per shard; past this a shard is plainly broken and the rest would drown the report.
MAX_PROBLEMS_PER_SHARD = 10


@dataclass
class CheckReport:
    shards: int = 0
    images: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    root: str, *, decode: bool = True, progress: Callable[[CheckReport, int], None] | None = None
) -> CheckReport:
    """Check every shard under root (a directory or an http(s) URL); progress(report, total shards)."""
    location = open_location(root)
    index = read_index(location)
    total = sum(len(shards) for shards in index.splits.values())
    report = CheckReport()
    for shards in index.splits.values():
        for shard in shards:
            problems = _check_shard(location, shard, decode)
            report.shards += 1
            report.images += shard.count
            report.bytes += shard.bytes
            if len(problems) > MAX_PROBLEMS_PER_SHARD:
                more = len(problems) - MAX_PROBLEMS_PER_SHARD
                problems = [*problems[:MAX_PROBLEMS_PER_SHARD], f"{shard.name}: ... and {more} more problems"]
            report.problems.extend(problems)
            if progress is not None:
                progress(report, total)
    return report


def _check_shard(location: Location, shard: ShardEntry, decode: bool) -> list[str]:
    name = shard.name
    try:
        data = location.read(name)
        members = read_members(location, name)
    except DataError as err:
        return [f"{name}: {err}"]
    problems = []
    if len(data) != shard.bytes:
        problems.append(f"{name}: {len(data)} bytes, packed as {shard.bytes} (truncated or replaced)")
    elif hashlib.sha256(data).hexdigest() != shard.sha256:
        problems.append(f"{name}: content differs from when it was packed (sha256)")
    if len(members) != shard.count:
        problems.append(f"{name}: its .idx lists {len(members)} images, the index {shard.count}")
    found, tar_error = _tar_members(data)
    if tar_error is not None:
        last = max(found, key=lambda member: found[member][0], default="its first member")
        problems.append(f"{name}: the tar breaks off after {last}: {tar_error}")
    for (member, offset, size), label in zip(members, shard.labels, strict=False):
        where = f"{name}/{member}"
        if found.get(member) != (offset, size):
            problems.append(f"{where}: missing or cut off (expected {size} bytes at {offset})")
            continue
        key = member.rsplit(".", 1)[0]
        if _text(data, found.get(key + ".cls")) != str(label):
            problems.append(f"{where}: its .cls is not the label {label} the index gives")
        if decode:
            try:
                decode_rgb(data[offset : offset + size], f"{location.describe(name)}/{member}")
            except DataError as err:
                problems.append(str(err))
    return problems


def _tar_members(data: bytes) -> tuple[dict[str, tuple[int, int]], str | None]:
    """(member name -> (data offset, size) of every member read, the error that stopped the reading or None);
    a member whose data runs past the end counts as missing."""
    found: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.offset_data + info.size <= len(data):
                    found[info.name] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError) as err:
        return found, str(err)
    return found, None


def _text(data: bytes, place: tuple[int, int] | None) -> str | None:
    if place is None:
        return None
    offset, size = place
    return data[offset : offset + size].decode("ascii", errors="replace").strip()
