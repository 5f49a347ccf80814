"""A client generated from /openapi.json by openapi-python-client, as a user of another language's generator
would make one, submits, reads and cancels jobs and submits a sweep against the running server, authenticating
with the declared bearer scheme alone (no hand-written headers)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.core import tokens
from api.core.db import make_engine
from api.core.models import ApiToken, Job, Sweep
from api.core.settings import Settings
from api.server.app import create_app
from tests.api.conftest import TINY_SPEC, serving

GENERATOR = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, api_pg_url: str, redis_url: str
) -> Iterator[tuple[str, str]]:
    """The API with authentication on under uvicorn, its URL and a token."""
    home = tmp_path_factory.mktemp("generated-client")
    settings = Settings(
        home=home, database_url=api_pg_url, broker_url=redis_url, queue=f"gen-{home.name}", auth="required"
    )
    settings.resolved_data_dir.mkdir()
    settings.resolved_storage.mkdir()
    engine = make_engine(api_pg_url)
    with Session(engine) as session:
        _row, token = tokens.create(session=session, owner="carol")
    try:
        with serving(create_app(settings)) as url:
            yield url, token
    finally:
        with Session(engine) as session:
            session.execute(delete(Job))
            session.execute(delete(Sweep))
            session.execute(delete(ApiToken))
            session.commit()
        engine.dispose()


@pytest.fixture(scope="module")
def generated(running: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated from the running server's /openapi.json."""
    assert GENERATOR is not None, "openapi-python-client is a dev dependency"
    out = tmp_path_factory.mktemp("generated")
    (out / "openapi.json").write_text(httpx.get(f"{running[0]}/openapi.json").text)
    subprocess.run(
        [
            GENERATOR,
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            "vitq_generated",
        ],
        cwd=out,
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("vitq_generated")
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n.startswith("vitq_generated")]:
            del sys.modules[name]


def call(generated: ModuleType, operation: str, **arguments: Any) -> Any:
    """`vitq_generated.api.<tag>.<operation_id>.sync_detailed(...)`: the operation named as the route is."""
    tag, name = operation.split(".")
    return importlib.import_module(f"vitq_generated.api.{tag}.{name}").sync_detailed(**arguments)


def test_a_generated_client_submits_reads_cancels_and_sweeps(
    generated: ModuleType, running: tuple[str, str]
) -> None:
    url, token = running
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`vitq token create`).",
    }
    assert document["security"] == [{"bearer": []}]  # every operation needs the token...
    assert document["paths"]["/healthz"]["get"]["security"] == []  # ...but the public ones
    assert document["paths"]["/jobs/{job_id}/cancel"]["post"]["operationId"] == "cancel_job"
    models = importlib.import_module("vitq_generated.models")
    anonymous = generated.Client(base_url=url)
    client = generated.AuthenticatedClient(base_url=url, token=token)
    spec = models.JobSpec.from_dict({**TINY_SPEC, "name": "generated"})
    assert call(generated, "jobs.submit_job", client=anonymous, body=spec).status_code == 401
    made = call(generated, "jobs.submit_job", client=client, body=spec)
    assert made.status_code == 201, made.content
    job_id = made.parsed.id
    shown = call(generated, "jobs.get_job", client=client, job_id=job_id)
    assert (shown.status_code, shown.parsed.status, shown.parsed.name) == (200, "queued", "generated")
    listed = call(generated, "jobs.list_jobs", client=client)
    assert job_id in [item.id for item in listed.parsed.items]
    assert call(generated, "jobs.cancel_job", client=client, job_id=job_id).status_code == 202
    sweep = models.SweepSpec.from_dict({"base": TINY_SPEC, "grid": {"optim.lr": [0.001, 0.01]}})
    swept = call(generated, "sweeps.submit_sweep", client=client, body=sweep)
    assert swept.status_code == 201, swept.content
    assert len(swept.parsed.jobs) == 2
