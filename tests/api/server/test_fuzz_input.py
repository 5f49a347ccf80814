"""Input that fuzzing (schemathesis over /openapi.json) turned into server errors: numbers the database columns
cannot hold, NUL characters PostgreSQL's text refuses, bodies nested deep enough to exhaust Python's stack.
Each is a 422 naming the field, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from api.core.models import MAX_ID, MAX_JOB_ID
from api.core.spec_input import MAX_DEPTH
from tests.api.conftest import TINY_SPEC, Api, submit

JOB_ROUTES = ("", "/metrics", "/checkpoints", "/checkpoints/step-000010", "/logs")
TOO_DEEP = 10_000


class Answer(Protocol):
    """What the test client answers (httpx's or httpx2's Response, whichever starlette found)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def assert_422_at(response: Answer, loc: list[str]) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error: dict[str, str] = response.json()["detail"][0]
    assert error["loc"] == loc, error
    return error


def test_job_ids_beyond_the_32_bit_column_are_422(api: Api) -> None:
    for path in JOB_ROUTES:
        assert_422_at(api.client.get(f"/jobs/{MAX_JOB_ID + 1}{path}"), ["path", "job_id"])
        assert_422_at(api.client.get(f"/jobs/{MAX_ID}{path}"), ["path", "job_id"])
        assert api.client.get(f"/jobs/{MAX_JOB_ID}{path}").status_code == 404, path
    assert_422_at(api.client.post(f"/jobs/{MAX_JOB_ID + 1}/cancel"), ["path", "job_id"])
    assert api.client.post(f"/jobs/{MAX_JOB_ID}/cancel").status_code == 404
    assert_422_at(api.client.get("/jobs", params={"parent": MAX_JOB_ID + 1}), ["query", "parent"])
    assert api.client.get("/jobs", params={"parent": MAX_JOB_ID}).json()["total"] == 0


def test_a_parent_job_beyond_the_32_bit_column_does_not_exist(api: Api) -> None:
    spec = {**TINY_SPEC, "kind": "finetune", "init": {"from_job": MAX_JOB_ID + 1}}
    error = assert_422_at(api.client.post("/jobs", json=spec), ["body", "init", "from_job"])
    assert error["msg"] == f"job {MAX_JOB_ID + 1} does not exist"
    assert api.stored_job_count() == 0


def test_offsets_and_cursors_are_bounded_by_the_64_bit_columns(api: Api) -> None:
    job_id = submit(api)["id"]
    assert_422_at(api.client.get("/jobs", params={"offset": MAX_ID + 1}), ["query", "offset"])
    assert api.client.get("/jobs", params={"offset": MAX_ID}).json() == {"items": [], "total": 1}
    assert_422_at(api.client.get("/sweeps", params={"offset": MAX_ID + 1}), ["query", "offset"])
    assert api.client.get("/sweeps", params={"offset": MAX_ID}).json() == {"items": [], "total": 0}
    metrics = f"/jobs/{job_id}/metrics"
    assert_422_at(api.client.get(metrics, params={"since": MAX_ID + 1}), ["query", "since"])
    assert api.client.get(metrics, params={"since": MAX_ID}).status_code == 200
    assert_422_at(api.client.get(metrics, params={"max_points": 10**7}), ["query", "max_points"])
    assert_422_at(api.client.get(f"/jobs/{job_id}/logs", params={"tail": 10**6}), ["query", "tail"])


def test_nul_characters_are_422(api: Api) -> None:
    job_id = submit(api)["id"]
    assert_422_at(
        api.client.get(f"/jobs/{job_id}/metrics", params={"names": "loss,a\0b"}), ["query", "names"]
    )
    assert_422_at(api.client.get(f"/jobs/{job_id}/checkpoints/step%00"), ["path", "name"])
    assert_422_at(api.client.get("/jobs", params={"q": "ti\0ny"}), ["query", "q"])
    # Without the NUL, the same requests are fine.
    assert api.client.get(f"/jobs/{job_id}/metrics", params={"names": "loss,ab"}).status_code == 200
    assert api.client.get(f"/jobs/{job_id}/checkpoints/step").status_code == 404
    assert api.client.get("/jobs", params={"q": "tiny"}).json()["total"] == 1


def _post(api: Api, body: str, content_type: str) -> Answer:
    return api.client.post("/jobs", content=body.encode(), headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("[" * TOO_DEEP + "]" * TOO_DEEP, "application/json"),
        ('{"a":' * TOO_DEEP + "1" + "}" * TOO_DEEP, "application/json"),
        ('{"kind": "pretrain", "x": ' + "[" * TOO_DEEP + "]" * TOO_DEEP + "}", "application/json"),
        ("[" * TOO_DEEP + "]" * TOO_DEEP, "application/yaml"),
        ("kind: pretrain\nx: " + "{a: " * TOO_DEEP + "1" + "}" * TOO_DEEP, "application/yaml"),
        ("- " * TOO_DEEP + "x\n", "application/yaml"),  # block sequences, one per "- "
        # Block mappings by indentation: 300 levels is what fits in the 64 KiB limit.
        ("".join(" " * level + "a:\n" for level in range(300)), "application/yaml"),
    ],
    ids=["json-list", "json-object", "json-in-field", "yaml-flow-list", "yaml-flow-map", "yaml-block-list",
         "yaml-block-map"],
)  # fmt: skip
def test_over_deep_bodies_are_422_before_the_parse_recurses(api: Api, body: str, content_type: str) -> None:
    assert len(body.encode()) <= api.settings.max_spec_bytes
    error = assert_422_at(_post(api, body, content_type), ["body"])
    assert f"nested deeper than {MAX_DEPTH} levels" in error["msg"]
    assert api.stored_job_count() == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_depth_up_to_the_limit_and_brackets_in_strings_are_parsed(api: Api, content_type: str) -> None:
    # One level for the spec mapping itself, the rest in a field: exactly MAX_DEPTH levels.
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    brackets_in_a_string = '"' + "[{" * TOO_DEEP + '"'
    body = f'{{"kind": "pretrain", "deep": {nested}, "text": {brackets_in_a_string}}}'
    detail = _post(api, body, content_type).json()["detail"]
    # Parsed, then refused by validation for its unknown fields: not by the depth check.
    assert {tuple(error["loc"]) for error in detail} == {("body", "deep"), ("body", "text")}, detail


def test_a_weights_path_too_long_for_the_file_system_is_422(api: Api) -> None:
    spec = {**TINY_SPEC, "kind": "finetune", "init": {"weights": "0" * 1000}}  # a name over 255 bytes
    error = assert_422_at(api.client.post("/jobs", json=spec), ["body", "init", "weights"])
    assert error["type"] == "weights_not_found"


_SPEC = (
    '{"kind": "pretrain", "model": {"variant": "Ti/4", "image_size": 16, "depth": 1, "embed_dim": 32, '
    '"num_heads": 2}, "train": {"steps": 40, "batch_size": 32}, "optim": {"betas": [0.9, %s]}}'
)


# Each a value no field can hold that the server once answered with a 500 (its parser, or its own 422, failed).
@pytest.mark.parametrize(
    ("value", "content_type", "kind"),
    [
        ("NaN", "application/json", "finite_number"),
        ("-Infinity", "application/json", "finite_number"),
        ("1e999", "application/json", "finite_number"),
        ("9" * 4400, "application/json", "int_too_long"),
        ('"\\ud800"', "application/json", "string_unicode"),
        (".nan", "application/yaml", "finite_number"),
        (".inf", "application/yaml", "finite_number"),
        ("9" * 4400, "application/yaml", "int_too_long"),
        ('"\\ud800"', "application/yaml", "string_unicode"),
    ],
    ids=["nan", "-infinity", "1e999", "4400-digits", "surrogate", "yaml-nan", "yaml-inf", "yaml-4400-digits",
         "yaml-surrogate"],
)  # fmt: skip
def test_non_finite_numbers_overlong_integers_and_lone_surrogates_are_422(
    api: Api, value: str, content_type: str, kind: str
) -> None:
    error = assert_422_at(_post(api, _SPEC % value, content_type), ["body", "optim", "betas", 1])
    assert error["type"] == kind
    grid_value = '{"base": ' + _SPEC % "0.999" + ', "grid": {"optim.betas": [[0.9, ' + value + "]]}}"
    sweeps = {
        ("base", "optim", "betas", 1): '{"base": ' + _SPEC % value + ', "grid": {"seed": [0]}}',
        ("grid", "optim.betas", 0, 1): grid_value,
    }
    for loc, body in sweeps.items():
        answer = api.client.post("/sweeps", content=body.encode(), headers={"content-type": content_type})
        assert assert_422_at(answer, ["body", *loc])["type"] == kind
    assert api.stored_job_count() == 0
    assert api.client.get("/sweeps").json()["total"] == 0


def test_random_draws_that_overflow_are_422(api: Api) -> None:
    sweep = {"base": TINY_SPEC, "random": {"samples": 2, "space": {"optim.lr": {"uniform": [-1e308, 1e308]}}}}
    error = assert_422_at(api.client.post("/sweeps", json=sweep), ["body", "random", "space", "optim.lr"])
    assert "narrow the bounds" in error["msg"]
    assert api.stored_job_count() == 0
