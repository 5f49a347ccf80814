"""Watching a job costs little: every watcher of a job shares one feed that reads what changed once a second (one
cheap query while nothing changes), and each change is sent to every watcher as a server-sent event. A hundred open
dashboards on a running job cost the API one feed, not a hundred pollers re-reading the job, its metrics and its log.

A watcher joins with its own cursors (metric id, log offset). A change whose range starts where the watcher stands
is sent as the feed read it; one it has already seen is skipped; only right after joining, when the watcher's own
catch-up and the feed overlap, does it read its own delta once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.core import reads
from api.core.metric_queries import query_metrics
from api.core.models import Job, MetricPoint
from api.core.settings import Settings
from api.server.log_files import tail_lines
from vit.rundir import LOG_FILE

POLL_S = 1.0
KEEPALIVE_S = 15.0
MAX_POINTS = 1_000_000  # a delta is sent whole: a second of new points is small
MAX_LOG_BYTES = 256 * 1024  # of one log event; a faster log is sent in several
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    kind: str  # "job", "metrics", "log", "end"
    data: str  # JSON for job and metrics, text for log
    start: int = 0  # the cursor (metric id, log byte offset) the change starts after
    end: int = 0  # ... and the one it ends at


class JobFeed:
    """One job's changes, read once for all its watchers."""

    def __init__(self, job_id: int, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.job_id = job_id
        self.sessions = sessions
        self.log_path = settings.run_dir(job_id) / LOG_FILE
        self.settings = settings
        self.watchers: set[asyncio.Queue[Change]] = set()
        self.job_json = ""
        self.cursor = 0
        self.offset = 0
        self.finished = False
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Stand at the present (nothing of the past is read: watchers catch up on their own), then follow it."""
        await asyncio.to_thread(self._stand)
        self.task = asyncio.create_task(self._run())

    def _stand(self) -> None:
        with self.sessions() as session:
            self.cursor = newest_point(session, self.job_id)
        self.offset = log_end(self.log_path)
        self._read()

    async def _run(self) -> None:
        while not self.finished:
            await asyncio.sleep(POLL_S)
            try:
                changes = await asyncio.to_thread(self._read)
            except Exception:  # the database away for a moment: watchers keep their streams, the feed retries
                log.warning("job %s: watching failed; retrying", self.job_id, exc_info=True)
                continue
            for change in changes:
                for watcher in self.watchers:
                    watcher.put_nowait(change)

    def _read(self) -> list[Change]:
        changes: list[Change] = []
        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                return changes
            # Metrics before the job: a watcher that sees the job end has every point of it already.
            newest = (
                session.scalar(select(func.max(MetricPoint.id)).where(MetricPoint.job_id == self.job_id)) or 0
            )
            if newest > self.cursor:
                out = query_metrics(
                    session=session, job_id=self.job_id, names=None, since=self.cursor, max_points=MAX_POINTS
                )
                if out is not None and out.cursor > self.cursor:
                    changes.append(Change("metrics", out.model_dump_json(), self.cursor, out.cursor))
                    self.cursor = out.cursor
            changes += self._log_changes()
            # The job as GET /jobs/{id} shows it, compared whole: its place and wait reason change with the queue
            # and the workers, its latest metrics and ETA with its progress, without its own row changing.
            (out_job,) = reads.shown(session=session, jobs=[job], settings=self.settings)
            job_json = out_job.model_dump_json()
            if job_json != self.job_json:
                self.job_json = job_json
                changes.append(Change("job", self.job_json))
            if job.status.finished:
                self.finished = True
                changes.append(Change("end", self.job_json))
        return changes

    def _log_changes(self) -> list[Change]:
        changes: list[Change] = []
        while True:
            chunk = read_log(self.log_path, self.offset, MAX_LOG_BYTES)
            if not chunk:
                return changes
            changes.append(
                Change("log", chunk.decode("utf-8", errors="replace"), self.offset, self.offset + len(chunk))
            )
            self.offset += len(chunk)


def newest_point(session: Session, job_id: int) -> int:
    """The id of the job's newest metric point (0: none): one probe of the (job_id, id) index."""
    return session.scalar(select(func.max(MetricPoint.id)).where(MetricPoint.job_id == job_id)) or 0


def log_end(path: Path) -> int:
    """The offset just after the log's last complete line."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            start = max(0, size - 64 * 1024)
            file.seek(start)
            tail = file.read()
    except FileNotFoundError:
        return 0
    return start + tail.rfind(b"\n") + 1 if b"\n" in tail else start


def read_log(path: Path, offset: int, limit: int) -> bytes:
    """Up to `limit` bytes of the log after `offset`, ending at a line's end when there is one (a watcher never
    sees half a line, nor half a UTF-8 character)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            chunk = file.read(limit)
    except FileNotFoundError:
        return b""
    cut = chunk.rfind(b"\n") + 1
    return chunk[:cut] if cut else (chunk if len(chunk) == limit else b"")


class Feeds:
    """The feeds of the jobs someone watches now, on app.state: started by the first watcher, stopped with the
    last."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.feeds: dict[int, JobFeed] = {}
        self.lock = asyncio.Lock()

    async def join(self, job_id: int) -> tuple[JobFeed, asyncio.Queue[Change]]:
        async with self.lock:
            feed = self.feeds.get(job_id)
            if feed is None:
                feed = JobFeed(job_id, self.sessions, self.settings)
                await feed.start()
                self.feeds[job_id] = feed
            queue: asyncio.Queue[Change] = asyncio.Queue()
            feed.watchers.add(queue)
            return feed, queue

    async def leave(self, feed: JobFeed, queue: asyncio.Queue[Change]) -> None:
        async with self.lock:
            feed.watchers.discard(queue)
            if not feed.watchers and self.feeds.get(feed.job_id) is feed:
                del self.feeds[feed.job_id]
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed.task


def event(kind: str, data: str) -> bytes:
    """One server-sent event: every line of the data prefixed with `data: ` (a log holds newlines)."""
    lines = data.split("\n")
    return (f"event: {kind}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


async def stream(
    feeds: Feeds,
    job_id: int,
    *,
    since: int | None,
    log_offset: int | None,
    log_tail: int | None,
    read_delta: Callable[[str, int], tuple[str, int]],
) -> AsyncIterator[bytes]:
    """A watcher's events: the job now, then every change. `since`/`log_offset` None: no metrics / no log from
    before joining, only what changes after; `log_tail`: the log's last lines first. `read_delta(kind, cursor)`
    reads a watcher's own catch-up."""
    feed, queue = await feeds.join(job_id)
    try:
        cursor = feed.cursor if since is None else since
        offset = feed.offset if log_offset is None else log_offset
        yield event("job", feed.job_json)
        if log_offset is None and log_tail and feed.offset:
            yield event("log", await asyncio.to_thread(tail_lines, feed.log_path, log_tail, feed.offset))
        for kind, start, end in (("metrics", cursor, feed.cursor), ("log", offset, feed.offset)):
            if start < end:  # the watcher's catch-up, up to where the feed stands
                data, reached = await asyncio.to_thread(read_delta, kind, start)
                yield event(kind, data)
                cursor, offset = (reached, offset) if kind == "metrics" else (cursor, reached)
        if feed.finished:
            yield event("end", feed.job_json)
            return
        while True:
            try:
                change = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"  # proxies close a silent connection
                continue
            mine = cursor if change.kind == "metrics" else offset
            if change.kind in ("metrics", "log") and change.end <= mine:
                continue  # seen in the catch-up
            if change.kind in ("metrics", "log") and change.start != mine:
                data, reached = await asyncio.to_thread(read_delta, change.kind, mine)
                change = Change(change.kind, data, mine, reached)
            if change.kind == "metrics":
                cursor = change.end
            elif change.kind == "log":
                offset = change.end
            yield event(change.kind, change.data)
            if change.kind == "end":
                return
    finally:
        await feeds.leave(feed, queue)


def delta_reader(
    job_id: int, sessions: sessionmaker[Session], settings: Settings
) -> Callable[[str, int], tuple[str, int]]:
    def read(kind: str, start: int) -> tuple[str, int]:
        if kind == "log":
            chunk = read_log(settings.run_dir(job_id) / LOG_FILE, start, MAX_LOG_BYTES)
            return chunk.decode("utf-8", errors="replace"), start + len(chunk)
        with sessions() as session:
            out = query_metrics(
                session=session, job_id=job_id, names=None, since=start, max_points=MAX_POINTS
            )
        assert out is not None  # the job exists: the watcher was let in
        return out.model_dump_json(), out.cursor

    return read
