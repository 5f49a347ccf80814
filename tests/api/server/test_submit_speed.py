"""POST /jobs and the speed options: fp8 on a CPU job is a 422 (the API knows no worker's GPU, but it knows a CPU
has no float8 matmuls); compile and fp8 on a GPU-capable job are stored as given."""

from __future__ import annotations

from tests.api.conftest import TINY_SPEC, Api, submit


def test_fp8_on_the_cpu_is_422_and_nothing_is_stored(api: Api) -> None:
    spec = {**TINY_SPEC, "train": {"steps": 4, "precision": "fp8"}, "resources": {"device": "cpu"}}
    response = api.client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert "fp8" in error["msg"] and "Hopper" in error["msg"]
    assert api.stored_job_count() == 0


def test_fp8_and_compile_on_a_job_for_any_device_are_stored(api: Api) -> None:
    job = submit(api, train={"steps": 4, "precision": "fp8", "compile": True})
    assert job["spec"]["train"]["precision"] == "fp8"
    assert job["spec"]["train"]["compile"] is True
    assert job["spec"]["resources"]["device"] == "auto"
    default = submit(api)
    assert default["spec"]["train"]["compile"] == "auto"
