"""api.core.spec_input's promises about the POST /jobs body, against a real uvicorn server (TestClient always sends a
Content-Length, so the streaming limit never runs under it): 413 from the declared length before any body is
read, 413 from a chunked body without a length, exactly the limit accepted; and how bodies are parsed: content
types with parameters, bodies that are not UTF-8, documents that are not a mapping."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from api.core.errors import InvalidInputError
from api.core.migrate import upgrade
from api.core.settings import Settings
from api.core.spec_input import MAX_DEPTH, check_spec, confine_paths, load_document
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC
from vit.config import JobSpec

LIMIT = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on SQLite and the embedded broker, with a spec limit of LIMIT bytes; its base URL."""
    home = tmp_path_factory.mktemp("spec-input")
    settings = Settings(home=home, max_spec_bytes=LIMIT)
    for directory in (settings.resolved_storage, settings.resolved_data_dir):
        directory.mkdir(parents=True)
    upgrade(settings.resolved_database_url)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _yaml_spec_of(size: int) -> bytes:
    """TINY_SPEC as YAML, padded with a comment to exactly `size` bytes."""
    text = yaml.safe_dump(TINY_SPEC) + "#"
    return (text + "x" * (size - len(text) - 1) + "\n").encode()


def _chunks(body: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_declared_length_over_the_limit_is_413_before_the_body_is_sent(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\n"
            + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )  # and no body: a server waiting to read it would time out here
        assert connection.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_declared_length_of_exactly_the_limit_is_read(server: str) -> None:
    body = _yaml_spec_of(LIMIT)
    response = httpx.post(f"{server}/jobs", content=body, headers={"content-type": "application/yaml"})
    assert response.request.headers["content-length"] == str(LIMIT)
    assert response.status_code == 201, response.text


def test_chunked_body_over_the_limit_is_413(server: str) -> None:
    body = _yaml_spec_of(LIMIT + 1)
    response = httpx.post(
        f"{server}/jobs", content=_chunks(body), headers={"content-type": "application/yaml"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json()["detail"] == f"the spec is larger than {LIMIT} bytes"


def test_chunked_body_of_exactly_the_limit_is_read(server: str) -> None:
    body = _yaml_spec_of(LIMIT)
    response = httpx.post(
        f"{server}/jobs", content=_chunks(body), headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["name"] == TINY_SPEC["name"]


def test_non_utf8_body_is_422_over_http(server: str) -> None:
    response = httpx.post(
        f"{server}/jobs", content=b'{"kind": "\xe9"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body"], "msg": "the body is not UTF-8 text", "type": "json_invalid"}
    ]


def _error(body: bytes, content_type: str) -> dict[str, Any]:
    with pytest.raises(InvalidInputError) as raised:
        check_spec(load_document(body, content_type))
    (error,) = raised.value.details
    return dict(error)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", " Application/JSON ;charset=UTF-8"],
)
def test_json_content_types_with_parameters_are_json(content_type: str) -> None:
    assert load_document(b'{"kind": "pretrain"}', content_type) == {"kind": "pretrain"}
    assert _error(b"kind: pretrain", content_type)["type"] == "json_invalid"  # YAML is not JSON


@pytest.mark.parametrize(
    "content_type", ["application/yaml; charset=utf-8", "text/yaml", "application/x-www-form-urlencoded", ""]
)
def test_other_content_types_are_yaml(content_type: str) -> None:
    assert load_document(b"kind: pretrain", content_type) == {"kind": "pretrain"}


def test_non_utf8_bodies_are_422() -> None:
    assert _error(b'{"kind": "\xe9"}', "application/json") == {
        "loc": ("body",),
        "msg": "the body is not UTF-8 text",
        "type": "json_invalid",
    }
    error = _error(b"kind: \xe9", "application/yaml")
    assert error["type"] == "yaml_invalid" and error["msg"].startswith("invalid YAML: ")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[1, 2]", "application/json"),
        (b'"pretrain"', "application/json"),
        (b"- kind", "text/yaml"),
        (b"", "text/yaml"),
    ],
)
def test_documents_that_are_not_a_mapping_are_422(body: bytes, content_type: str) -> None:
    assert _error(body, content_type) == {
        "loc": ("body",),
        "msg": "a spec is a mapping with at least `kind: pretrain` or `kind: finetune`",
        "type": "value_error",
    }


def test_yaml_errors_name_line_and_column() -> None:
    error = _error(b"kind: pretrain\nname: [unclosed\n", "application/yaml")
    assert error["type"] == "yaml_invalid"
    assert error["msg"].startswith("invalid YAML at line 3 column 1: ")


def test_json_errors_name_line_and_column() -> None:
    error = _error(b'{\n  "kind": pretrain}', "application/json")
    assert error == {
        "loc": ("body", 12),
        "msg": "invalid JSON at line 2 column 11: Expecting value",
        "type": "json_invalid",
    }


def test_validation_errors_are_located_in_the_body() -> None:
    error = _error(b"kind: pretrain\ntrain: {steps: -1}\n", "application/yaml")
    assert error["loc"] == ["body", "train", "steps"]  # through pydantic's JSON: a list
    # 0 is a probe (evaluate only, docs/transfer.md); below it nothing.
    assert (
        error["msg"] == "Input should be greater than or equal to 0" and error["type"] == "greater_than_equal"
    )


def test_multi_node_specs_pass() -> None:
    spec = check_spec(load_document(b"kind: pretrain\nresources: {nodes: 2}\n", "application/yaml"))
    assert spec.resources.nodes == 2


def test_a_valid_spec_passes() -> None:
    spec = check_spec(load_document(yaml.safe_dump(TINY_SPEC).encode(), "application/yaml"))
    assert spec.name == "tiny" and spec.resources.nodes == 1


def test_declared_length_over_the_limit_says_why(server: str) -> None:
    response = httpx.post(
        f"{server}/jobs", content=_yaml_spec_of(LIMIT + 1), headers={"content-type": "application/yaml"}
    )
    assert "content-length" in response.request.headers
    assert response.status_code == 413
    assert response.json()["detail"] == f"the spec is larger than {LIMIT} bytes"


def test_only_the_first_parameter_separator_ends_the_media_type() -> None:
    error = _error(b"kind: pretrain", "application/json; charset=utf-8; profile=spec")
    assert error["type"] == "json_invalid"  # read as JSON, not as the YAML it would parse as


def test_validation_errors_carry_no_documentation_urls() -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_spec({"kind": "pretrain", "train": {"steps": -1}})
    (error,) = raised.value.details
    assert "url" not in error


def test_yaml_reader_errors_say_what_is_wrong() -> None:
    # A control character stops PyYAML's reader, whose error has no `problem`: its own text is the message.
    error = _error(b"kind: pretrain\x07", "application/yaml")
    assert error["type"] == "yaml_invalid"
    assert "special characters are not allowed" in error["msg"]


# Depth: exactly MAX_DEPTH brackets or levels are parsed, one more is refused, wherever it sits.
def _depth_error(body: bytes, content_type: str) -> dict[str, Any] | None:
    error = _error(body, content_type)
    return error if error["type"] == "too_deep" else None


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_max_depth_is_parsed_and_one_more_is_refused(content_type: str) -> None:
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert _depth_error(deepest, content_type) is None  # parsed, then refused as not a mapping
    error = _depth_error(b"[" + deepest + b"]", content_type)
    assert error is not None and error["loc"] == ("body",)
    assert f"nested deeper than {MAX_DEPTH} levels" in error["msg"]


def test_closed_siblings_do_not_make_room_for_deeper_nesting() -> None:
    # [[], [[...]]]: the closed [] gives back exactly its own level.
    body = b"[[], " + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"]"
    assert _depth_error(body, "application/json") is not None


def test_json_depth_errors_name_the_line_of_the_first_bracket_too_deep() -> None:
    body = b'\n\n{"kind":\n' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"\n}\n"
    error = _depth_error(body, "application/json")
    assert error is not None and error["msg"] == f"nested deeper than {MAX_DEPTH} levels (at line 4)"


def test_yaml_depth_errors_name_line_and_column() -> None:
    body = b"kind: pretrain\nx: " + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"\n"
    error = _depth_error(body, "application/yaml")
    # The mapping is one level: the list opened at column MAX_DEPTH + 3 of line 2 is the one too many.
    assert error is not None
    assert (
        error["msg"]
        == f"invalid YAML at line 2 column {MAX_DEPTH + 3}: nested deeper than {MAX_DEPTH} levels"
    )


# Confinement: every path a spec names resolves inside the data (or, for weights, storage) directory.
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path)
    for directory in (settings.resolved_storage, settings.resolved_data_dir):
        directory.mkdir(parents=True)
    return settings


def _finetune(weights: str) -> JobSpec:
    return JobSpec.model_validate({"kind": "finetune", "init": {"weights": weights}})


def _confinement_error(spec: JobSpec, settings: Settings, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(InvalidInputError) as raised:
        confine_paths(spec, settings, **kwargs)
    (error,) = raised.value.details
    return dict(error)


def test_relative_paths_come_back_resolved(settings: Settings) -> None:
    (settings.resolved_data_dir / "images").mkdir()
    (settings.resolved_data_dir / "w.safetensors").write_bytes(b"w")
    spec = JobSpec.model_validate(
        {
            "kind": "finetune",
            "data": {"dataset": "imagefolder", "root": "images"},
            "init": {"weights": "w.safetensors"},
        }
    )
    confined = confine_paths(spec, settings)
    assert confined.data.root == os.path.realpath(settings.resolved_data_dir / "images")
    assert confined.init is not None
    assert confined.init.weights == os.path.realpath(settings.resolved_data_dir / "w.safetensors")


def test_paths_outside_are_refused_naming_the_allowed_directories(settings: Settings) -> None:
    data, storage = (os.path.realpath(d) for d in (settings.resolved_data_dir, settings.resolved_storage))
    error = _confinement_error(_finetune("../elsewhere.safetensors"), settings)
    assert error == {
        "loc": ("body", "init", "weights"),
        "msg": f"must be inside {data} or {storage}",
        "type": "path_not_allowed",
    }
    root = JobSpec.model_validate(
        {"kind": "pretrain", "data": {"dataset": "imagefolder", "root": str(storage)}}
    )
    error = _confinement_error(root, settings)
    assert error == {
        "loc": ("body", "data", "root"),
        "msg": f"must be inside {data}",
        "type": "path_not_allowed",
    }


def test_nul_in_a_path_is_refused(settings: Settings) -> None:
    error = _confinement_error(_finetune("w\0.safetensors"), settings)
    assert (error["msg"], error["type"]) == ("must not contain a NUL character", "path_not_allowed")


def test_missing_weights_suggest_from_job(settings: Settings) -> None:
    error = _confinement_error(_finetune("runs/pre"), settings)
    assert error["type"] == "weights_not_found"
    assert error["msg"].endswith("to start from a job of this service, set init.from_job instead")


class _Readable:
    """may_read_job for a non-admin allowed to read `jobs`, recording what it was asked."""

    def __init__(self, *jobs: int) -> None:
        self.jobs, self.asked = set(jobs), list[int]()

    def __call__(self, job_id: int) -> bool:
        self.asked.append(job_id)
        return job_id in self.jobs


@pytest.mark.parametrize(
    ("relative", "asked", "allowed"),
    [
        ("jobs/5", [5], True),  # the run directory itself
        ("jobs/5/checkpoints/step-10", [5], True),
        ("jobs/6/checkpoints/step-10", [6], False),  # another owner's run
        ("jobs", [], False),
        ("jobs/notanid/w.pt", [], False),
        ("uploads/5/w.pt", [], False),  # storage outside any run directory
    ],
)
def test_non_admins_read_weights_in_storage_only_from_runs_they_may_read(
    settings: Settings, relative: str, asked: list[int], allowed: bool
) -> None:
    (settings.resolved_storage / relative).mkdir(parents=True)
    readable = _Readable(5)
    spec = _finetune(str(settings.resolved_storage / relative))
    if allowed:
        assert confine_paths(spec, settings, may_read_job=readable).init is not None
    else:
        assert _confinement_error(spec, settings, may_read_job=readable)["type"] == "weights_not_found"
    assert readable.asked == asked
    # An admin (no may_read_job) reads any of them.
    assert confine_paths(spec, settings).init is not None


def test_non_admins_read_weights_in_the_data_directory(settings: Settings) -> None:
    (settings.resolved_data_dir / "w.safetensors").write_bytes(b"w")
    readable = _Readable()
    assert confine_paths(_finetune("w.safetensors"), settings, may_read_job=readable).init is not None
    assert readable.asked == []
