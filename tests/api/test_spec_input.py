"""api.spec_input's promises about the POST /jobs body, against a real uvicorn server (TestClient always sends a
Content-Length, so the streaming limit never runs under it): 413 from the declared length before any body is
read, 413 from a chunked body without a length, exactly the limit accepted; and how bodies are parsed: content
types with parameters, bodies that are not UTF-8, documents that are not a mapping."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from fastapi.exceptions import RequestValidationError

from api.app import create_app
from api.migrate import upgrade
from api.settings import Settings
from api.spec_input import check_spec, load_document

from .conftest import TINY_SPEC

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
            b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/yaml\r\n"
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
    with pytest.raises(RequestValidationError) as raised:
        check_spec(load_document(body, content_type))
    (error,) = raised.value.errors()
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
    assert error["msg"] == "Input should be greater than 0" and error["type"] == "greater_than"


def test_multi_node_specs_pass() -> None:
    spec = check_spec(load_document(b"kind: pretrain\nresources: {nodes: 2}\n", "application/yaml"))
    assert spec.resources.nodes == 2


def test_a_valid_spec_passes() -> None:
    spec = check_spec(load_document(yaml.safe_dump(TINY_SPEC).encode(), "application/yaml"))
    assert spec.name == "tiny" and spec.resources.nodes == 1
