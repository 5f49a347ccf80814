"""POST /transfers (validated; probe and fine-tune children made all or none), GET /transfers, GET
/transfers/{id}, its table.csv, POST /transfers/{id}/cancel. tests/e2e/test_transfer.py runs one through a real
worker."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from sqlalchemy import update

from api.core.models import Job, JobStatus, Transfer
from tests.api.conftest import Api, submit


def post_transfer(api: Api, transfer: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = api.client.post("/transfers", json=transfer)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def digits_and_folder(api: Api, source: int, **more: Any) -> dict[str, Any]:
    (api.settings.resolved_data_dir / "flowers").mkdir(exist_ok=True)
    return {
        "name": "tt",
        "source": {"from_job": source},
        "base": {"model": {"image_size": 32}, "resources": {"device": "cpu"}},
        "datasets": [{"dataset": "digits"}, {"dataset": "imagefolder", "root": "flowers"}],
        "few_shot": [5, 1],
        **more,
    }


def test_a_probe_and_a_fine_tune_per_dataset_from_the_source_job(api: Api) -> None:
    source = submit(api)
    transfer = post_transfer(api, digits_and_folder(api, source["id"], finetune={"train": {"steps": 7}}))
    probe, tune, folder_probe, folder_tune = (job["spec"] for job in transfer["jobs"])
    # The probe trains nothing and measures the shots; the fine-tune trains and measures top-1 only.
    assert (probe["train"]["steps"], probe["eval"]["few_shot"]) == (0, [1, 5])
    assert (tune["train"]["steps"], tune["eval"]["few_shot"]) == (7, [])
    for spec in (probe, tune, folder_probe, folder_tune):
        assert spec["kind"] == "finetune" and spec["init"]["from_job"] == source["id"]
        # The source job's model, with base's fields over it; base's other sections kept.
        assert spec["model"] == {**source["spec"]["model"], "image_size": 32}
        assert spec["resources"]["device"] == "cpu"
    assert folder_probe["data"]["root"] == str((api.settings.resolved_data_dir / "flowers").resolve())
    assert [job["name"] for job in transfer["jobs"]] == [
        "tt digits probe",
        "tt digits finetune",
        "tt flowers probe",
        "tt flowers finetune",
    ]
    # They wait for the source (still queued): only the source was enqueued.
    assert {job["parent_job_id"] for job in transfer["jobs"]} == {source["id"]}
    assert all(job["wait_reason"] for job in transfer["jobs"])
    assert api.sent_job_ids() == [source["id"]]

    table = transfer["table"]
    assert [(c["key"], c["label"], c["role"]) for c in table["columns"]] == [
        ("few_shot_1", "1-shot", "probe"),
        ("few_shot_5", "5-shot", "probe"),
        ("val_top1", "fine-tune", "finetune"),
    ]
    ids = [job["id"] for job in transfer["jobs"]]
    assert [(r["dataset"], r["probe"], r["finetune"]) for r in table["rows"]] == [
        ("digits", ids[0], ids[1]),
        ("flowers", ids[2], ids[3]),
    ]
    assert table["rows"][0]["status"] == {"probe": "queued", "finetune": "queued"}
    assert all(v is None for r in table["rows"] for v in r["values"].values())
    assert table["mean"] == {"few_shot_1": None, "few_shot_5": None, "val_top1": None}
    assert (transfer["job_count"], transfer["status_counts"], transfer["finished"]) == (
        4,
        {"queued": 4},
        False,
    )

    shown = api.client.get(f"/transfers/{transfer['id']}").json()
    assert shown == {**transfer, "jobs": shown["jobs"]} and [j["id"] for j in shown["jobs"]] == ids
    listed = api.client.get("/transfers").json()
    assert listed["total"] == 1 and "jobs" not in listed["items"][0]
    assert listed["items"][0]["table"] == table
    csv = api.client.get(f"/transfers/{transfer['id']}/table.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text == "dataset,1-shot,5-shot,fine-tune\ndigits,,,\nflowers,,,\nmean,,,\n"


def test_yaml_body_probes_only_by_default_shots(api: Api) -> None:
    source = submit(api)
    body = yaml.safe_dump({"source": {"from_job": source["id"]}, "datasets": [{"dataset": "digits"}]})
    response = api.client.post("/transfers", content=body, headers={"content-type": "application/yaml"})
    assert response.status_code == 201, response.text
    transfer = response.json()
    assert [c["label"] for c in transfer["table"]["columns"]] == ["1-shot", "5-shot", "10-shot", "25-shot"]
    assert [job["name"] for job in transfer["jobs"]] == ["transfer digits probe"]
    assert transfer["table"]["rows"][0]["finetune"] is None


def test_cancel_cancels_every_unfinished_child(api: Api) -> None:
    source = submit(api)
    transfer = post_transfer(api, digits_and_folder(api, source["id"]))
    done, _queued = (job["id"] for job in transfer["jobs"])
    with api.session() as session:
        session.execute(update(Job).where(Job.id == done).values(status=JobStatus.succeeded))
        session.commit()
    response = api.client.post(f"/transfers/{transfer['id']}/cancel")
    assert response.status_code == 202, response.text
    assert [job["status"] for job in response.json()["jobs"]] == ["succeeded", "cancelled"]
    assert api.client.get(f"/jobs/{source['id']}").json()["status"] == "queued"  # the source is no child
    assert api.client.post(f"/transfers/{transfer['id']}/cancel").status_code == 202


def test_unknown_transfer_is_404(api: Api) -> None:
    for path in ("/transfers/12345", "/transfers/12345/table.csv"):
        assert api.client.get(path).status_code == 404
    assert api.client.post("/transfers/12345/cancel").status_code == 404


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"datasets": [{"dataset": "digits"}, {"dataset": "mnist"}]}, ["datasets", 1, "dataset"], "digits"),
        ({"datasets": [{"dataset": "imagefolder"}]}, ["datasets", 0], "data.root"),
        ({"datasets": [{"dataset": "imagefolder", "root": "/etc"}]}, ["datasets", 0, "root"], "inside"),
        ({"datasets": []}, ["datasets"], "at least 1"),
        ({"few_shot": [0]}, ["few_shot", 0], "greater than or equal to 1"),
        ({"few_shot": [5, 5]}, ["few_shot"], "each number of shots once"),
        ({"few_shot": []}, [], "nothing to measure"),
        ({"source": {"from_job": 999999}}, ["source", "from_job"], "does not exist"),
        ({"source": {"weights": "nothing-here.npz"}}, ["source", "weights"], "no weights"),
        ({"source": {}}, ["source"], "exactly one of from_job or weights"),
        ({"base": {"data": {"dataset": "digits"}}}, ["base", "data"], "set by the transfer"),
        ({"base": {"eval": {"few_shot": [1]}}}, ["base", "eval", "few_shot"], "few_shot"),
        ({"base": {"optim": {"lr": 99}}}, ["base", "optim", "lr"], "digits probe: "),
        ({"finetune": {"optim": {"lrr": 1}}}, ["finetune", "optim", "lrr"], "digits finetune: "),
        ({"finetune": {"train": {"steps": 0}}}, ["finetune", "train", "steps"], "at least 1 step"),
        ({"finetune": {"init": {"weights": "x"}}}, ["finetune", "init"], "set by the transfer"),
        # Sections the transfer merges into must be mappings: a model name was a 500, a scalar eval dropped.
        ({"base": {"model": "S/16"}}, ["base", "model"], "a mapping"),
        ({"base": {"train": 5}}, ["base", "train"], "a mapping"),
        ({"finetune": {"eval": 5}}, ["finetune", "eval"], "a mapping"),
        ({"shots": [1]}, ["shots"], "Extra inputs"),
    ],
)
def test_a_bad_transfer_is_a_422_naming_the_field_and_stores_nothing(
    api: Api, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    source = submit(api)
    body = {"source": {"from_job": source["id"]}, "datasets": [{"dataset": "digits"}], **change}
    detail = post_transfer(api, body, status=422)["detail"]
    assert detail[0]["loc"] == ["body", *loc], detail
    assert words in detail[0]["msg"], detail
    assert api.stored_job_count() == 1  # the source alone
    with api.session() as session:
        assert session.query(Transfer).count() == 0
    assert api.sent_job_ids() == [source["id"]]
