"""GET /jobs (filters, pagination, newest first), GET /jobs/{id}, POST /jobs/{id}/cancel."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, update

from api.core import workers
from api.core.models import Job, JobStatus, MetricPoint
from tests.api.conftest import TINY_SPEC, Api, submit


def set_status(api: Api, job_id: int, status: JobStatus, **values: object) -> None:
    with api.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, **values))
        session.commit()


def test_list_filters_and_paginates_newest_first(api: Api) -> None:
    ids = [submit(api, name=f"job{i}")["id"] for i in range(5)]
    finetune = submit(api, {"kind": "finetune", "init": {"from_job": ids[0]}})["id"]
    set_status(api, ids[1], JobStatus.running)

    everything = api.client.get("/jobs").json()
    assert everything["total"] == 6
    assert [j["id"] for j in everything["items"]] == [finetune, *reversed(ids)]

    page = api.client.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 6
    assert [j["id"] for j in page["items"]] == [ids[4], ids[3]]

    running = api.client.get("/jobs", params={"status": "running"}).json()
    assert (running["total"], [j["id"] for j in running["items"]]) == (1, [ids[1]])
    finetunes = api.client.get("/jobs", params={"kind": "finetune"}).json()
    assert [j["id"] for j in finetunes["items"]] == [finetune]
    both = api.client.get("/jobs", params={"kind": "pretrain", "status": "queued"}).json()
    assert both["total"] == 4

    children = api.client.get("/jobs", params={"parent": ids[0]}).json()
    assert (children["total"], [j["id"] for j in children["items"]]) == (1, [finetune])
    assert api.client.get("/jobs", params={"parent": ids[1]}).json()["total"] == 0


def test_list_searches_names_literally(api: Api) -> None:
    ids = [submit(api, name=name)["id"] for name in ("lr-sweep-3e-4", "LR_sweep_1e-3", "baseline")]
    found = api.client.get("/jobs", params={"q": "lr"}).json()
    assert [j["id"] for j in found["items"]] == [ids[1], ids[0]]  # case-blind
    # `_` and `%` are literal characters, not LIKE wildcards.
    assert [j["id"] for j in api.client.get("/jobs", params={"q": "r_s"}).json()["items"]] == [ids[1]]
    assert api.client.get("/jobs", params={"q": "%"}).json()["total"] == 0


@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"offset": -1}, {"status": "sleeping"}])
def test_list_rejects_bad_parameters(api: Api, params: dict[str, int | str]) -> None:
    assert api.client.get("/jobs", params=params).status_code == 422


def test_get_shows_progress_and_latest_metrics(api: Api) -> None:
    job = submit(api)
    started = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    set_status(api, job["id"], JobStatus.running, step=30, attempt=1, started_at=started, worker="w1")
    points = [
        ("loss", 10, 2.0),
        ("loss", 30, 1.5),
        ("loss", 20, 1.8),
        ("images_per_s", 30, 320.0),
        ("val_top1", 10, 0.4),
        ("val_top1", 20, 0.7),
        ("val_top1", 30, 0.6),
    ]
    with api.session() as session:
        session.execute(
            insert(MetricPoint),
            [{"job_id": job["id"], "name": n, "step": s, "value": v, "time": 0.0} for n, s, v in points],
        )
        session.commit()

    shown = api.client.get(f"/jobs/{job['id']}").json()
    assert shown["status"] == "running"
    assert (shown["step"], shown["total_steps"], shown["progress"]) == (30, 40, 0.75)
    assert shown["started_at"] == "2030-01-02T03:04:05Z"
    assert shown["latest_metrics"] == {"loss": 1.5, "images_per_s": 320.0, "val_top1": 0.6}
    assert shown["best_val_top1"] == 0.7
    assert shown["images_per_s"] == 320.0
    assert shown["eta_seconds"] == pytest.approx(10 * 32 / 320.0)  # 10 steps left of 32 images at 320 img/s
    listed = api.client.get("/jobs").json()["items"][0]
    assert listed["latest_metrics"] == shown["latest_metrics"]


def test_unknown_job_is_404(api: Api) -> None:
    for path in ("/jobs/424242", "/jobs/424242/metrics", "/jobs/424242/checkpoints", "/jobs/424242/logs"):
        response = api.client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "job 424242 not found"}
    assert api.client.post("/jobs/424242/cancel").status_code == 404


def test_cancel_a_queued_job_cancels_it_and_fails_its_waiting_finetune(api: Api) -> None:
    parent = submit(api)
    child = submit(api, {"kind": "finetune", "init": {"from_job": parent["id"]}})
    response = api.client.post(f"/jobs/{parent['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    child_now = api.client.get(f"/jobs/{child['id']}").json()
    assert child_now["status"] == "failed"
    assert child_now["error"] == f"parent job {parent['id']} was cancelled"


def test_cancel_a_running_job_asks_its_worker_to_stop(api: Api) -> None:
    job = submit(api)
    set_status(api, job["id"], JobStatus.running, attempt=1)
    response = api.client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_cancel_a_finished_job_is_409(api: Api, status: JobStatus) -> None:
    job = submit(api)
    set_status(api, job["id"], status)
    response = api.client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json() == {"detail": f"job {job['id']} is {status}; it cannot be cancelled"}


def test_ids_beyond_64_bits_are_refused_not_a_server_error(api: Api) -> None:
    too_big = 2**64
    for path in ("", "/metrics", "/checkpoints", "/checkpoints/step-000010", "/logs"):
        response = api.client.get(f"/jobs/{too_big}{path}")
        assert response.status_code == 422, path
        assert response.json()["detail"][0]["loc"] == ["path", "job_id"]
    assert api.client.post(f"/jobs/{too_big}/cancel").status_code == 422
    job_id = submit(api)["id"]
    assert api.client.get(f"/jobs/{job_id}/metrics", params={"since": too_big}).status_code == 422
    response = api.client.post("/jobs", json={"kind": "finetune", "init": {"from_job": too_big}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == f"job {too_big} does not exist"


def test_a_queued_job_says_its_place_in_the_queue_and_why_it_waits(api: Api) -> None:
    first, second, third = (submit(api, name=f"q{i}")["id"] for i in range(3))
    waiting = submit(api, {"kind": "finetune", "init": {"from_job": first}})["id"]
    set_status(api, first, JobStatus.running)
    jobs = {j["id"]: j for j in api.client.get("/jobs").json()["items"]}
    assert [jobs[i]["queue_position"] for i in (first, second, third, waiting)] == [None, 1, 2, None]
    assert jobs[third]["wait_reason"].startswith("no worker is running")
    assert jobs[waiting]["wait_reason"] == f"waiting for job {first} to succeed"  # its own reason first
    with api.session() as session:
        workers.announce(session=session, name="host-a:1", host="host-a", pid=1)
    try:
        shown = api.client.get(f"/jobs/{third}").json()
        assert (shown["queue_position"], shown["wait_reason"]) == (
            2,
            "waiting for a free worker (1 job ahead)",
        )
    finally:
        with api.session() as session:
            workers.retire(session=session, name="host-a:1")


def test_a_lineage_and_a_sweep_list_whole_at_the_cost_of_any_list(api: Api) -> None:
    pretrain = submit(api, name="pre")["id"]
    tune = submit(api, {"kind": "finetune", "init": {"from_job": pretrain}}, name="tune")["id"]
    tune_of_tune = submit(api, {"kind": "finetune", "init": {"from_job": tune}}, name="tune2")["id"]
    other = submit(api, name="other")["id"]
    other_tune = submit(api, {"kind": "finetune", "init": {"from_job": other}}, name="tune-other")["id"]
    sweep = api.client.post("/sweeps", json={"base": TINY_SPEC, "grid": {"optim.lr": [0.001, 0.002]}}).json()

    def listed(**params: object) -> list[int]:
        response = api.client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == len(page["items"])
        return [job["id"] for job in page["items"]]

    assert listed(lineage_of=pretrain) == [tune_of_tune, tune, pretrain]  # recursively, newest first
    assert listed(lineage_of=tune) == [tune_of_tune, tune]
    assert listed(lineage_of=other) == [other_tune, other]
    assert listed(lineage_of=pretrain, kind="finetune") == [tune_of_tune, tune]  # with the other filters
    children = [job["job"]["id"] for job in sweep["jobs"]]
    assert sorted(listed(sweep_id=sweep["id"])) == sorted(children)
    shown = api.client.get("/jobs", params={"limit": 100}).json()["items"]
    assert {job["id"]: job["sweep_id"] for job in shown} == {
        **{job_id: None for job_id in (pretrain, tune, tune_of_tune, other, other_tune)},
        **{child: sweep["id"] for child in children},
    }
    assert listed(lineage_of=424242) == [] and listed(sweep_id=424242) == []
    for bad in ({"lineage_of": 0}, {"sweep_id": 2**31}):
        assert api.client.get("/jobs", params=bad).status_code == 422
