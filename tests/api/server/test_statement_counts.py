"""A page costs the same number of SQL statements however many jobs there are: the job page and the list page,
with queued, running and finished jobs on them (a read that rolled its caller back made SQLAlchemy reload every
row already loaded, one statement each)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.orm import Session

from api.core import state_machine as sm
from api.core import workers
from tests.api.conftest import Api, submit


@contextmanager
def counted(api: Api) -> Iterator[list[str]]:
    """The statements the app's own engine runs meanwhile."""
    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def add_jobs(api: Api, count: int) -> list[int]:
    return [submit(api, name=f"j{i}")["id"] for i in range(count)]


def page_costs(api: Api, job_id: int, jobs: int) -> tuple[int, int]:
    """Statements of the job's page, and of the list's last 20-job page (the oldest jobs: the running and the
    finished one among them)."""
    with counted(api) as one:
        assert api.client.get(f"/jobs/{job_id}").status_code == 200
    with counted(api) as page:
        items = api.client.get(f"/jobs?limit=20&offset={jobs - 20}").json()["items"]
    assert {job["status"] for job in items} == {"queued", "running", "succeeded"}
    with counted(api) as lineage:  # the grouped list's filters cost no statement of their own
        assert len(api.client.get(f"/jobs?limit=20&lineage_of={job_id}").json()["items"]) == 1
    # One queued job that never started: the total, the job, its place with its pool's live workers.
    assert len(lineage) == 3, lineage
    return len(one), len(page)


def test_statements_per_page_do_not_grow_with_the_jobs(api: Api) -> None:
    with api.session() as session:
        workers.announce(session=session, name="w", host="h", pid=1)
    first = add_jobs(api, 25)
    with Session(api.engine) as session:  # a running and a finished job on the page too
        held = sm.claim(session=session, worker="w")
        assert held is not None
        assert sm.finish(
            session=session, claim=sm.claim(session=session, worker="w"), status=sm.JobStatus.succeeded
        )  # type: ignore[arg-type]
    queued = first[-1]
    small = page_costs(api, queued, 25)
    add_jobs(api, 75)
    large = page_costs(api, queued, 100)
    assert large == small
    # A queued job that never started: one statement, the job with its place and its pool's live workers (no
    # metric summary: it has none). A page: the total, the jobs, the metric summaries of those that started, the
    # queue's head and the live workers.
    assert small == (1, 5), small


def test_a_submit_costs_its_owners_limits_and_one_insert_that_brings_its_fit_check_along(api: Api) -> None:
    """The INSERT hands back the stored row (RETURNING): the answer needs no read after the commit; and with it
    the capacity of the pool's live workers, which the fit check reads. (With authentication on, the owner's
    limits come with the token lookup instead.)"""
    submit(api, name="first")  # the app's statements are compiled and cached
    with counted(api) as statements:
        job = submit(api, name="second")
    assert [s.split()[0] for s in statements] == ["SELECT", "INSERT"], statements
    assert "FROM owner_limits" in statements[0]
    assert "RETURNING" in statements[1] and "FROM workers" in statements[1]
    assert job["status"] == "queued" and job["created_at"] and job["spec"]["name"] == "second"
