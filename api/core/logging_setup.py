"""Process-wide logging for `vitq serve` and `python -m worker`: text by default, JSON lines with
VITQ_LOG_FORMAT=json. Every line about a job carries its id: pass `extra={"job_id": ...}`, wrap the code that
works on a job in `with job_context(job_id):`, or log through `job_logger(logger, job_id)`."""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar("vitq_job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s:%(job_prefix)s %(message)s"


@contextmanager
def job_context(job_id: int) -> Iterator[None]:
    """Lines logged inside (in this thread or task, and in threads started with its copied context) carry
    job_id."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class _JobAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def job_logger(logger: logging.Logger, job_id: int) -> logging.LoggerAdapter[logging.Logger]:
    return _JobAdapter(logger, {"job_id": job_id})


class JobIdFilter(logging.Filter):
    """Sets record.job_id (from `extra` or the job context; None when the line is about no job) and the text
    format's job_prefix."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            job_id = record.job_id = _current_job.get()
        record.job_prefix = "" if job_id is None else f" [job {job_id}]"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def json_requested() -> bool:
    return os.environ.get("VITQ_LOG_FORMAT", "text").strip().lower() == "json"


def configure_logging(level: str | int = "INFO") -> None:
    """One stderr handler on the root logger, replacing any earlier one (so calling it twice is harmless)."""
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if json_requested() else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
