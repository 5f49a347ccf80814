"""GET /jobs/{id}/metrics: columnar series, the `since` cursor, and downsampling that keeps spikes."""

from __future__ import annotations

from sqlalchemy import insert

from api.core.models import MetricPoint
from tests.api.conftest import Api, submit


def add_points(api: Api, job_id: int, name: str, steps: range, value: object = None) -> None:
    rows = [
        {
            "job_id": job_id,
            "name": name,
            "step": s,
            "value": value if value is not None else 1.0 / s,
            "time": 0.0,
        }
        for s in steps
    ]
    with api.session() as session:
        session.execute(insert(MetricPoint), rows)
        session.commit()


def test_series_by_name_and_since_cursor(api: Api) -> None:
    job_id = submit(api)["id"]
    empty = api.client.get(f"/jobs/{job_id}/metrics").json()
    assert empty == {"series": {}, "cursor": 0}

    add_points(api, job_id, "loss", range(1, 4))
    add_points(api, job_id, "val_top1", range(2, 4, 2), value=0.5)
    first = api.client.get(f"/jobs/{job_id}/metrics").json()
    assert first["series"] == {
        "loss": {"steps": [1, 2, 3], "values": [1.0, 0.5, 1 / 3]},
        "val_top1": {"steps": [2], "values": [0.5]},
    }

    add_points(api, job_id, "loss", range(4, 6))
    newer = api.client.get(f"/jobs/{job_id}/metrics", params={"since": first["cursor"]}).json()
    assert newer["series"] == {"loss": {"steps": [4, 5], "values": [0.25, 0.2]}}
    assert newer["cursor"] > first["cursor"]
    nothing = api.client.get(f"/jobs/{job_id}/metrics", params={"since": newer["cursor"]}).json()
    assert nothing == {"series": {}, "cursor": newer["cursor"]}

    only = api.client.get(f"/jobs/{job_id}/metrics", params={"names": "val_top1"}).json()
    assert list(only["series"]) == ["val_top1"]


def test_long_series_is_downsampled_keeping_its_extremes(api: Api) -> None:
    job_id = submit(api)["id"]
    steps = range(1, 5001)
    add_points(api, job_id, "loss", steps)  # 1/step: falls from 1.0 to 0.0002
    with api.session() as session:  # one spike and one dip that a plain stride would miss
        session.execute(
            insert(MetricPoint),
            [
                {"job_id": job_id, "name": "loss", "step": 2500, "value": 9.0, "time": 0.0},
                {"job_id": job_id, "name": "loss", "step": 3333, "value": -1.0, "time": 0.0},
            ],
        )
        session.commit()
    add_points(api, job_id, "val_top1", range(500, 5001, 500), value=0.5)

    answer = api.client.get(f"/jobs/{job_id}/metrics", params={"max_points": 100}).json()
    loss = answer["series"]["loss"]
    assert 50 <= len(loss["steps"]) <= 100
    assert loss["steps"] == sorted(loss["steps"])
    assert loss["steps"][0] == 1 and loss["values"][0] == 1.0  # the first bucket's maximum
    assert 9.0 in loss["values"] and -1.0 in loss["values"]
    assert loss["steps"][loss["values"].index(9.0)] == 2500
    assert min(loss["values"][-5:]) == min(1.0 / s for s in steps[-50:])
    # A short series in the same answer comes whole.
    assert answer["series"]["val_top1"]["steps"] == list(range(500, 5001, 500))
    whole = api.client.get(f"/jobs/{job_id}/metrics", params={"max_points": 10000, "names": "loss"}).json()
    assert len(whole["series"]["loss"]["steps"]) == 5002
    assert whole["cursor"] == answer["cursor"]
