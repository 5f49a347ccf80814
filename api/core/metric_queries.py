"""Reading metric points fast: Core queries (no ORM objects), columnar results, downsampling done by the
database so a 100k-point series never crosses the wire whole.

The queries lean on two indexes of metric_points: (job_id, name, step) finds a series' names, step range and
latest value in a few index probes (a "skip scan" written as a recursive CTE, since neither PostgreSQL nor SQLite
skips by itself), and (job_id, id) serves the `since` cursor. On PostgreSQL the first one also holds value and
id, so downsampling a series reads the index alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from api.core.models import MetricPoint
from api.core.schemas import MetricsOut, Series

BEST_METRIC = "val_top1"
THROUGHPUT_METRIC = "images_per_s"


@dataclass
class MetricSummary:
    latest: dict[str, float] = field(default_factory=dict)
    best_val_top1: float | None = None

    @property
    def images_per_s(self) -> float | None:
        return self.latest.get(THROUGHPUT_METRIC)


# Each metric name of each job, found by jumping from one name to the next along (job_id, name, step).
_SERIES_CTE = """
WITH RECURSIVE series(job_id, name) AS (
    SELECT j.id, (SELECT min(m.name) FROM metric_points m WHERE m.job_id = j.id)
    FROM jobs j WHERE j.id IN :job_ids
    UNION ALL
    SELECT s.job_id, (SELECT min(m.name) FROM metric_points m WHERE m.job_id = s.job_id AND m.name > s.name)
    FROM series s WHERE s.name IS NOT NULL
)
"""

# Latest value of each series (is_best 0) and the best val_top1 (is_best 1): one round trip.
_SUMMARY_SQL = text(
    _SERIES_CTE
    + """
SELECT s.job_id, s.name,
    (SELECT m.value FROM metric_points m WHERE m.job_id = s.job_id AND m.name = s.name
     ORDER BY m.step DESC LIMIT 1) AS value,
    0 AS is_best
FROM series s WHERE s.name IS NOT NULL
UNION ALL
SELECT m.job_id, m.name, max(m.value), 1 FROM metric_points m
WHERE m.job_id IN :job_ids AND m.name = :best_name GROUP BY m.job_id, m.name
"""
).bindparams(bindparam("job_ids", expanding=True))

# The job's cursor (a row only when the job exists: name NULL), then each series' step range. One round trip,
# and one snapshot: every range is consistent with the cursor.
_RANGES_SQL = text(
    _SERIES_CTE
    + """
SELECT NULL AS name, NULL AS first_step, NULL AS last_step,
    (SELECT coalesce(max(m.id), 0) FROM metric_points m WHERE m.job_id = j.id) AS cursor
FROM jobs j WHERE j.id IN :job_ids
UNION ALL
SELECT s.name,
    (SELECT min(m.step) FROM metric_points m WHERE m.job_id = s.job_id AND m.name = s.name) AS first_step,
    (SELECT max(m.step) FROM metric_points m WHERE m.job_id = s.job_id AND m.name = s.name) AS last_step,
    NULL
FROM series s WHERE s.name IS NOT NULL
"""
).bindparams(bindparam("job_ids", expanding=True))

# One pass over the series: per bucket of steps, the points holding the lowest and the highest value (so spikes
# and dips survive downsampling). PostgreSQL: min/max over (value, step) arrays give both at once; OFFSET 0 keeps
# the subquery from being flattened, so each row builds its array once rather than once per aggregate.
_BUCKETS_POSTGRES = text(
    """
SELECT min(point) AS low, max(point) AS high
FROM (
    SELECT ARRAY[value, step::float8] AS point, (step - :first_step) / :width AS bucket
    FROM metric_points
    WHERE job_id = :job_id AND name = :name AND id <= :cursor
    OFFSET 0
) AS points
GROUP BY bucket
"""
)
# SQLite: a bare column next to min() or max() comes from the row holding that min or max.
_BUCKETS_SQLITE = text(
    """
SELECT step, min(value) FROM metric_points
WHERE job_id = :job_id AND name = :name AND id <= :cursor GROUP BY (step - :first_step) / :width
UNION
SELECT step, max(value) FROM metric_points
WHERE job_id = :job_id AND name = :name AND id <= :cursor GROUP BY (step - :first_step) / :width
"""
)


def summarize_metrics(*, session: Session, job_ids: Sequence[int]) -> dict[int, MetricSummary]:
    """Latest value of every metric and the best val_top1, for each job: a few index probes per series."""
    summaries: dict[int, MetricSummary] = {}
    if not job_ids:
        return summaries
    params = {"job_ids": list(job_ids), "best_name": BEST_METRIC}
    for job_id, name, value, is_best in session.execute(_SUMMARY_SQL, params):
        summary = summaries.setdefault(job_id, MetricSummary())
        if is_best:
            summary.best_val_top1 = value
        else:
            summary.latest[name] = value
    return summaries


def query_metrics(
    *, session: Session, job_id: int, names: Sequence[str] | None, since: int | None, max_points: int
) -> MetricsOut | None:
    """Series by name (None when the job does not exist). With `since`, every point newer than that cursor;
    without, each whole series, reduced to about max_points points when it spans more steps than that."""
    rows = session.execute(_RANGES_SQL, {"job_ids": [job_id]}).all()
    cursor = next((row.cursor for row in rows if row.name is None), None)
    if cursor is None:
        return None
    # Every query below stops at this id, so points written meanwhile come with the next poll, not never.
    if since is not None:
        series = _points_since(session=session, job_id=job_id, names=names, since=since, cursor=cursor)
        return MetricsOut(series=series, cursor=max(cursor, since))
    wanted = [
        (row.name, row.first_step, row.last_step)
        for row in rows
        if row.name is not None and (names is None or row.name in names)
    ]
    whole = [name for name, first, last in wanted if last - first + 1 <= max_points]
    series = (
        _points_since(session=session, job_id=job_id, names=whole, since=0, cursor=cursor) if whole else {}
    )
    for name, first, last in wanted:
        if name not in series and name not in whole:
            series[name] = _downsampled(
                session=session,
                job_id=job_id,
                name=name,
                first=first,
                last=last,
                max_points=max_points,
                cursor=cursor,
            )
    return MetricsOut(series=series, cursor=cursor)


def _points_since(
    *, session: Session, job_id: int, names: Sequence[str] | None, since: int, cursor: int
) -> dict[str, Series]:
    query = (
        select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.job_id == job_id, MetricPoint.id > since, MetricPoint.id <= cursor)
        .order_by(MetricPoint.name, MetricPoint.step)
    )
    if names is not None:
        query = query.where(MetricPoint.name.in_(names))
    columns: dict[str, tuple[list[int], list[float]]] = {}
    for name, step, value in session.execute(query):
        steps, values = columns.get(name) or columns.setdefault(name, ([], []))
        steps.append(step)
        values.append(value)
    return {
        name: Series.model_construct(steps=steps, values=values) for name, (steps, values) in columns.items()
    }


def _downsampled(
    *, session: Session, job_id: int, name: str, first: int, last: int, max_points: int, cursor: int
) -> Series:
    params = {
        "job_id": job_id,
        "name": name,
        "cursor": cursor,
        "first_step": first,
        "width": -(
            -(last - first + 1) // max(max_points // 2, 1)
        ),  # steps per bucket; a bucket gives 2 points
    }
    points: set[tuple[int, float]] = set()
    if session.get_bind().dialect.name == "postgresql":
        for low, high in session.execute(_BUCKETS_POSTGRES, params):
            points.add((int(low[1]), low[0]))
            points.add((int(high[1]), high[0]))
    else:
        points.update((step, value) for step, value in session.execute(_BUCKETS_SQLITE, params))
    ordered = sorted(points)
    return Series.model_construct(steps=[s for s, _ in ordered], values=[v for _, v in ordered])
