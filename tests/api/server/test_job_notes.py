"""PATCH /jobs/{id}: tags and notes, the owner's only; bad input is a 422 naming the field and stores nothing."""

from __future__ import annotations

import pytest

from api.core import job_notes
from api.core.errors import JobNotFoundError
from api.core.state_machine import Principal
from tests.api.conftest import Api, submit


def test_the_owner_tags_and_annotates_a_job_and_bad_input_changes_nothing(api: Api) -> None:
    job_id = submit(api)["id"]
    changed = api.client.patch(
        f"/jobs/{job_id}", json={"tags": ["baseline", "lr", "baseline"], "notes": "ok"}
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["tags"], changed.json()["notes"]) == (["baseline", "lr"], "ok")
    assert api.client.patch(f"/jobs/{job_id}", json={"notes": "second look"}).json()["tags"] == [
        "baseline",
        "lr",
    ]
    listed = api.client.get("/jobs").json()["items"][0]
    assert (listed["tags"], listed["notes"]) == (["baseline", "lr"], "second look")

    for body, loc in (
        ({"tags": ["two words"]}, ["body", "tags", 0]),
        ({"tags": ["x" * 41]}, ["body", "tags", 0]),
        ({"tags": [f"t{i}" for i in range(21)]}, ["body", "tags"]),
        ({"notes": "a\x00b"}, ["body", "notes"]),
        ({"color": "red"}, ["body", "color"]),
    ):
        refused = api.client.patch(f"/jobs/{job_id}", json=body)
        assert refused.status_code == 422, body
        assert refused.json()["detail"][0]["loc"] == loc, refused.json()
    assert api.client.get(f"/jobs/{job_id}").json()["tags"] == ["baseline", "lr"]
    assert api.client.patch(f"/jobs/{job_id}", json={"tags": [], "notes": ""}).json()["notes"] is None
    assert api.client.patch("/jobs/999999", json={"tags": []}).status_code == 404

    # Another owner, an admin included, cannot write them: the job is not found for them.
    with api.session() as session:
        for other in (Principal(owner="mallory"), Principal(owner="root", is_admin=True)):
            with pytest.raises(JobNotFoundError):
                job_notes.annotate(
                    session=session, job_id=job_id, principal=other, change=job_notes.JobNotesIn(notes="mine")
                )
    assert api.client.get(f"/jobs/{job_id}").json()["notes"] is None
