"""POST /jobs: JSON and YAML specs are stored resolved and enqueued; bad specs are 422 with the field path and
leave nothing behind (no row, no message)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import update

from api.core.models import Checkpoint, Job, JobStatus
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC, Api, submit
from vit.config import JobSpec


def test_json_spec_is_stored_resolved_and_enqueued(api: Api) -> None:
    job = submit(api)
    assert job["status"] == "queued"
    assert job["total_steps"] == 40
    assert job["max_attempts"] == api.settings.max_attempts
    assert job["spec"] == JobSpec.model_validate(TINY_SPEC).resolved().model_dump(mode="json")
    assert job["spec"]["optim"]["name"] == "adamw"  # the pretrain default, filled in
    assert api.client.get(f"/jobs/{job['id']}").json()["spec"] == job["spec"]
    assert api.sent_job_ids() == [job["id"]]


@pytest.mark.parametrize("content_type", ["application/yaml", "text/yaml", "application/x-yaml"])
def test_yaml_spec_is_accepted(api: Api, content_type: str) -> None:
    response = api.client.post(
        "/jobs", content=yaml.safe_dump(TINY_SPEC), headers={"content-type": content_type}
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "tiny"
    assert api.sent_job_ids() == [response.json()["id"]]


def _post(api: Api, body: str | bytes, content_type: str = "application/json") -> Any:
    return api.client.post("/jobs", content=body, headers={"content-type": content_type})


def _assert_nothing_stored(api: Api) -> None:
    assert api.stored_job_count() == 0
    assert api.sent_job_ids() == []


def test_bad_field_is_422_at_its_path(api: Api) -> None:
    response = _post(api, json.dumps({**TINY_SPEC, "optim": {"lr": -1}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "optim", "lr"]
    assert "greater than 0" in error["msg"]
    _assert_nothing_stored(api)


def test_unknown_field_is_rejected(api: Api) -> None:
    response = _post(api, json.dumps({**TINY_SPEC, "train": {"steps": 10, "lerning_rate": 1}}))
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "train", "lerning_rate"]]
    _assert_nothing_stored(api)


def test_yaml_syntax_error_names_the_line(api: Api) -> None:
    response = _post(api, "kind: pretrain\ntrain:\n  steps: [10\n", "application/yaml")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert "invalid YAML at line 4" in error["msg"]
    _assert_nothing_stored(api)


def test_bad_json_is_422(api: Api) -> None:
    response = _post(api, '{"kind": "pretrain",')
    assert response.status_code == 422
    assert "invalid JSON" in response.json()["detail"][0]["msg"]
    _assert_nothing_stored(api)


def test_spec_larger_than_the_limit_is_413(api: Api) -> None:
    padding = "#" * api.settings.max_spec_bytes
    response = _post(api, f"kind: pretrain\n{padding}\n", "application/yaml")
    assert response.status_code == 413
    _assert_nothing_stored(api)


def test_unknown_parent_job_is_rejected(api: Api) -> None:
    response = _post(api, json.dumps({"kind": "finetune", "init": {"from_job": 987654}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "init", "from_job"]
    assert "987654 does not exist" in error["msg"]
    _assert_nothing_stored(api)


def test_finetune_of_a_running_parent_waits_without_being_enqueued(api: Api) -> None:
    parent = submit(api)
    with api.session() as session:
        session.execute(update(Job).where(Job.id == parent["id"]).values(status=JobStatus.running))
        session.commit()
    child = submit(api, {"kind": "finetune", "init": {"from_job": parent["id"]}})
    assert child["status"] == "queued"
    assert child["parent_job_id"] == parent["id"]
    assert child["wait_reason"] == f"waiting for job {parent['id']} to succeed"
    assert child["spec"]["optim"]["name"] == "sgd"  # the fine-tune default
    assert api.sent_job_ids() == [parent["id"]]


def test_finetune_of_a_succeeded_parent_is_enqueued_at_once(api: Api) -> None:
    parent = submit(api)
    with api.session() as session:
        session.execute(update(Job).where(Job.id == parent["id"]).values(status=JobStatus.succeeded))
        session.commit()
    child = submit(api, {"kind": "finetune", "init": {"from_job": parent["id"]}})
    assert child["wait_reason"] is None
    assert api.sent_job_ids() == [parent["id"], child["id"]]


def test_unknown_checkpoint_of_a_succeeded_parent_is_rejected(api: Api) -> None:
    parent = submit(api)
    with api.session() as session:
        session.execute(update(Job).where(Job.id == parent["id"]).values(status=JobStatus.succeeded))
        session.add(Checkpoint(job_id=parent["id"], name="step-000040", step=40, size_bytes=1))
        session.commit()
    api.sent_job_ids()
    spec: dict[str, Any] = {
        "kind": "finetune",
        "init": {"from_job": parent["id"], "checkpoint": "step-000010"},
    }
    response = _post(api, json.dumps(spec))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "init", "checkpoint"]
    assert error["msg"] == f"job {parent['id']} has no checkpoint 'step-000010'; it has step-000040"
    assert api.stored_job_count() == 1
    spec["init"]["checkpoint"] = "step-000040"
    assert _post(api, json.dumps(spec)).status_code == 201


@pytest.mark.parametrize("status", [JobStatus.failed, JobStatus.cancelled])
def test_finetune_of_a_failed_or_cancelled_parent_needs_a_checkpoint(api: Api, status: JobStatus) -> None:
    parent = submit(api)
    api.sent_job_ids()
    with api.session() as session:
        session.execute(update(Job).where(Job.id == parent["id"]).values(status=status))
        session.commit()
    response = _post(api, json.dumps({"kind": "finetune", "init": {"from_job": parent["id"]}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "init", "from_job"]
    assert error["msg"] == f"job {parent['id']} is {status} and kept no checkpoint to start from"
    assert api.stored_job_count() == 1
    assert api.sent_job_ids() == []

    # A stopped run that kept a checkpoint is a starting point: the fine-tune is queued at once, not waiting.
    with api.session() as session:
        session.add(Checkpoint(job_id=parent["id"], name="step-000020", step=20, size_bytes=1))
        session.commit()
    child = submit(api, {"kind": "finetune", "init": {"from_job": parent["id"], "checkpoint": "step-000020"}})
    assert child["wait_reason"] is None and child["parent_job_id"] == parent["id"]
    assert api.sent_job_ids() == [child["id"]]


def test_dataset_root_escaping_the_data_dir_is_rejected(api: Api) -> None:
    spec = {**TINY_SPEC, "data": {"dataset": "imagefolder", "root": "../../../etc"}}
    response = _post(api, json.dumps(spec))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "data", "root"]
    assert f"must be inside {os.path.realpath(api.settings.resolved_data_dir)}" in error["msg"]
    _assert_nothing_stored(api)


def test_shards_over_http_only_from_a_prefix_the_operator_allowed(api: Api) -> None:
    url = "https://data.example/ds/train-{0000..0003}.tar"
    spec = {**TINY_SPEC, "data": {"dataset": "shards", "root": url}}
    refused = _post(api, json.dumps(spec))
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "data", "root"] and "VITQ_DATA_URLS" in error["msg"], error
    _assert_nothing_stored(api)
    settings = api.settings.model_copy(update={"data_urls": "https://data.example/ds"})
    api.client.app.state.settings = settings  # type: ignore[attr-defined]
    # Another host that merely begins with the allowed one's name is not under the prefix.
    evil = {**spec, "data": {"dataset": "shards", "root": "https://data.example/dsx/a.tar"}}
    assert _post(api, json.dumps(evil)).status_code == 422
    stored = _post(api, json.dumps(spec))
    assert stored.status_code == 201, stored.text
    assert stored.json()["spec"]["data"]["root"] == url  # a URL, not a path under the data directory


def test_symlink_out_of_the_data_dir_is_rejected(api: Api) -> None:
    outside = api.settings.home / "outside"
    outside.mkdir()
    (outside / "weights.safetensors").write_bytes(b"not inside")
    (api.settings.resolved_data_dir / "link").symlink_to(outside)
    spec = {"kind": "finetune", "init": {"weights": "link/weights.safetensors"}}
    response = _post(api, json.dumps(spec))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "init", "weights"]
    _assert_nothing_stored(api)


def test_dataset_root_in_the_run_storage_is_rejected(api: Api) -> None:
    # Weights may come from run directories; datasets (which download: true writes into) may not.
    spec = {**TINY_SPEC, "data": {"dataset": "imagefolder", "root": str(api.settings.resolved_storage)}}
    response = _post(api, json.dumps(spec))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "data", "root"]
    assert error["msg"] == f"must be inside {os.path.realpath(api.settings.resolved_data_dir)}"
    _assert_nothing_stored(api)


def test_path_with_a_nul_character_is_422(api: Api) -> None:
    response = _post(api, json.dumps({"kind": "finetune", "init": {"weights": "w\u0000.safetensors"}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (["body", "init", "weights"], "must not contain a NUL character")
    _assert_nothing_stored(api)


def test_paths_inside_the_data_and_storage_dirs_are_stored_resolved(api: Api) -> None:
    (api.settings.resolved_data_dir / "images").mkdir()
    job = submit(api, data={"dataset": "imagefolder", "root": "images"})
    assert job["spec"]["data"]["root"] == os.path.realpath(api.settings.resolved_data_dir / "images")
    weights = api.settings.resolved_storage / "jobs" / "1"
    weights.mkdir(parents=True)
    child = submit(api, {"kind": "finetune", "init": {"weights": str(weights)}})
    assert child["spec"]["init"]["weights"] == os.path.realpath(weights)


def test_weights_that_do_not_exist_are_422_at_submit(api: Api) -> None:
    # examples/digits-finetune.yaml names runs/pre: a local run directory the service does not have.
    response = _post(api, json.dumps({"kind": "finetune", "init": {"weights": "runs/pre"}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "init", "weights"]
    assert error["msg"].startswith(
        f"no weights at {os.path.realpath(api.settings.resolved_data_dir / 'runs/pre')} "
    )
    assert "init.from_job" in error["msg"]
    _assert_nothing_stored(api)


def test_job_is_stored_and_201_when_the_broker_is_down(api: Api) -> None:
    down = api.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), base_url="http://localhost") as client:
        response = client.post("/jobs", json=TINY_SPEC)
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    assert api.stored_job_count() == 1  # the reaper re-enqueues it once the broker is back


def test_message_is_a_celery_protocol_2_task(api: Api) -> None:
    job = submit(api)
    with Connection(api.settings.resolved_broker_url) as connection:
        queue = connection.SimpleQueue(api.settings.queue)
        try:
            message = queue.get(timeout=5)
            message.ack()
        finally:
            queue.close()
    args, kwargs, embed = message.decode()
    assert (args, kwargs) == ([job["id"]], {})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    headers = message.headers
    assert headers["task"] == "vitq.run_job" and headers["lang"] == "py"
    assert headers["id"] == headers["root_id"] == message.properties["correlation_id"]
    assert headers["argsrepr"] == f"[{job['id']}]"
    assert message.delivery_info["routing_key"] == api.settings.queue


def test_yaml_aliases_are_refused_before_they_expand(api: Api) -> None:
    # Four levels of ten references (10**4 values once expanded) keep this test quick even without the check;
    # each further level multiplies validation time and the 422 body by ten.
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 4)]
    body = "kind: pretrain\nbomb:\n" + "".join(f"  {line}\n" for line in levels)
    response = _post(api, body, "application/yaml")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["msg"].startswith("invalid YAML at line 4 column ")
    assert error["msg"].endswith("aliases (*name) are not allowed in a spec")
    _assert_nothing_stored(api)
