"""A small HTTP client for the vitq service, used by the `vitq` CLI and importable by users.

    from api.client import VitqClient
    with VitqClient("http://127.0.0.1:8000") as vitq:
        job = vitq.submit(open("examples/digits-pretrain.yaml").read())
        print(vitq.get(job["id"])["status"])

Every failure (server unreachable, an error status) raises `VitqError` with a one-line message taken from the
server's answer, so callers never have to read httpx exceptions or FastAPI's error bodies.
"""

from __future__ import annotations

import builtins
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from api.client.credentials import saved_token

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})
SUBMIT_TRIES = 3  # a submit that timed out is sent again with the same Idempotency-Key: still one job


class VitqError(Exception):
    """A request that did not succeed; `status_code` is None when the server could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def default_url() -> str:
    return os.environ.get("VITQ_URL") or DEFAULT_URL


def format_validation_errors(detail: list[Any]) -> str:
    """FastAPI's 422 detail as `optim.lr: Input should be greater than 0; ...` (the "body" prefix dropped)."""
    parts = []
    for error in detail:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = [str(part) for part in error.get("loc", [])]
        if loc and loc[0] == "body":
            loc = loc[1:]
        field = ".".join(loc)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return f"HTTP {response.status_code}: {text[0] if text else response.reason_phrase}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return f"invalid spec: {format_validation_errors(detail)}"
    if detail:
        return str(detail)
    return f"HTTP {response.status_code}: {response.reason_phrase}"


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream (comments skipped, multi-line data joined with newlines)."""
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", list[str]()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])


class VitqClient:
    # `list` is a method here (it lists jobs), so annotations inside the class say `builtins.list`.
    def __init__(self, url: str | None = None, *, timeout: float = 30.0, token: str | None = None) -> None:
        """`token`: default $VITQ_TOKEN or the one `vitq login` saved (none: a server without auth)."""
        self.url = (url or default_url()).rstrip("/")
        token = token or saved_token()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> VitqClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise VitqError(f"cannot reach the vitq server at {self.url} ({exc})") from exc
        if response.status_code >= 400:
            raise VitqError(error_message(response), response.status_code)
        return response

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/healthz").json())

    def submit(self, spec: str | dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Post a spec: a dict, or the text of a YAML or JSON file (JSON is sent as JSON, the rest as YAML).
        Sent with an Idempotency-Key (default: a new uuid4) and retried with it when the answer is lost (a
        timeout, a dropped connection): the server makes one job however many tries reach it."""
        if isinstance(spec, dict):
            content, content_type = json.dumps(spec), "application/json"
        elif spec.lstrip().startswith("{"):
            content, content_type = spec, "application/json"
        else:
            content, content_type = spec, "application/yaml"
        headers = {"content-type": content_type, "idempotency-key": idempotency_key or str(uuid.uuid4())}
        tries = 0
        while True:
            tries += 1
            try:
                return dict(self._request("POST", "/jobs", content=content.encode(), headers=headers).json())
            except VitqError as error:
                if error.status_code is not None or tries == SUBMIT_TRIES:  # an answer, or out of tries
                    raise

    def sweep(self, spec: str | dict[str, Any]) -> dict[str, Any]:
        """Post a sweep (a base spec and a grid or random space, or a search): the sweep with its children."""
        if isinstance(spec, dict):
            content, content_type = json.dumps(spec), "application/json"
        else:
            content, content_type = spec, "application/yaml"  # YAML is a superset of JSON
        response = self._request(
            "POST", "/sweeps", content=content.encode(), headers={"content-type": content_type}
        )
        return dict(response.json())

    def transfer(self, spec: str | dict[str, Any]) -> dict[str, Any]:
        """Post a transfer (a source checkpoint and datasets): the transfer with its table and children."""
        if isinstance(spec, dict):
            content, content_type = json.dumps(spec), "application/json"
        else:
            content, content_type = spec, "application/yaml"
        response = self._request(
            "POST", "/transfers", content=content.encode(), headers={"content-type": content_type}
        )
        return dict(response.json())

    def transfer_status(self, transfer_id: int) -> dict[str, Any]:
        """The transfer with its table and children (GET /transfers/ID)."""
        return dict(self._request("GET", f"/transfers/{transfer_id}").json())

    def transfer_csv(self, transfer_id: int) -> str:
        """The table as CSV (GET /transfers/ID/table.csv)."""
        return self._request("GET", f"/transfers/{transfer_id}/table.csv").text

    def sweep_status(self, sweep_id: int) -> dict[str, Any]:
        """The sweep with its children (GET /sweeps/ID)."""
        return dict(self._request("GET", f"/sweeps/{sweep_id}").json())

    def list(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """`{"items": [job, ...], "total": N}`, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        if kind:
            params["kind"] = kind
        return dict(self._request("GET", "/jobs", params=params).json())

    def get(self, job_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/jobs/{job_id}").json())

    def cancel(self, job_id: int) -> dict[str, Any]:
        return dict(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def metrics(
        self,
        job_id: int,
        *,
        names: builtins.list[str] | None = None,
        since: int | None = None,
        max_points: int | None = None,
    ) -> dict[str, Any]:
        """`{"series": {name: {"steps": [...], "values": [...]}}, "cursor": id}`; pass `cursor` back as `since`."""
        params: dict[str, Any] = {}
        if names:
            params["names"] = ",".join(names)
        if since is not None:
            params["since"] = since
        if max_points is not None:
            params["max_points"] = max_points
        return dict(self._request("GET", f"/jobs/{job_id}/metrics", params=params).json())

    def checkpoints(self, job_id: int) -> builtins.list[dict[str, Any]]:
        return builtins.list(self._request("GET", f"/jobs/{job_id}/checkpoints").json()["items"])

    def download(self, job_id: int, checkpoint: str | None = None, dest: str | Path | None = None) -> Path:
        """Save a checkpoint's model.safetensors (default: the newest checkpoint) and return its path."""
        if checkpoint is None:
            items = self.checkpoints(job_id)
            if not items:
                raise VitqError(f"job {job_id} has no checkpoints yet")
            checkpoint = str(max(items, key=lambda item: item["step"])["name"])
        path = Path(dest) if dest is not None else Path(f"job{job_id}-{checkpoint}.safetensors")
        partial = path.with_name(path.name + ".part")
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/checkpoints/{checkpoint}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise VitqError(error_message(response), response.status_code)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise VitqError(f"cannot reach the vitq server at {self.url} ({exc})") from exc
        except OSError as exc:  # a missing directory, no permission, a full disk
            partial.unlink(missing_ok=True)
            raise VitqError(f"cannot write {path}: {exc.strerror or exc}") from exc
        partial.replace(path)
        return path

    def events(
        self, job_id: int, *, since: int | None = None, log_tail: int | None = None
    ) -> Iterator[tuple[str, Any]]:
        """A job's changes as they happen, until it ends: ("job", job), ("metrics", {"series", "cursor"}), ("log",
        text) and last ("end", job). `since`: metric points after this cursor first (0: all); `log_tail`: the
        log's last lines first. Raises VitqError when the stream breaks (reconnect with the last cursor)."""
        params = {k: v for k, v in (("since", since), ("log_tail", log_tail)) if v is not None}
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/events", params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise VitqError(error_message(response), response.status_code)
                for kind, data in server_sent_events(response.iter_lines()):
                    yield kind, (data if kind == "log" else json.loads(data))
                    if kind == "end":
                        return
        except httpx.TransportError as exc:
            raise VitqError(f"lost the vitq server at {self.url} ({exc})") from exc

    def logs(self, job_id: int, *, tail: int = 200) -> str:
        return self._request("GET", f"/jobs/{job_id}/logs", params={"tail": tail}).text
