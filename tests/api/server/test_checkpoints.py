"""Checkpoints: listed from the database, downloaded from the run directory, only for names the database has."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load, save_file

from api.core.models import Checkpoint
from tests.api.conftest import Api, submit


def add_checkpoint(api: Api, job_id: int, name: str, step: int) -> Path:
    """A real checkpoint file in the run directory, and its row."""
    directory = api.settings.run_dir(job_id) / "checkpoints" / name
    directory.mkdir(parents=True)
    path = directory / "model.safetensors"
    save_file({"head.weight": torch.full((3, 4), float(step)), "head.bias": torch.zeros(3)}, str(path))
    with api.session() as session:
        session.add(Checkpoint(job_id=job_id, name=name, step=step, size_bytes=path.stat().st_size))
        session.commit()
    return path


def test_list_and_download(api: Api) -> None:
    job_id = submit(api)["id"]
    assert api.client.get(f"/jobs/{job_id}/checkpoints").json() == {"items": []}
    add_checkpoint(api, job_id, "step-000020", 20)
    path = add_checkpoint(api, job_id, "step-000010", 10)

    items = api.client.get(f"/jobs/{job_id}/checkpoints").json()["items"]
    assert [(c["name"], c["step"]) for c in items] == [("step-000010", 10), ("step-000020", 20)]
    assert items[0]["size_bytes"] == path.stat().st_size
    assert items[0]["url"] == f"/jobs/{job_id}/checkpoints/step-000010"
    assert items[0]["created_at"].endswith("Z")

    response = api.client.get(items[0]["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert f'filename="job{job_id}-step-000010.safetensors"' in response.headers["content-disposition"]
    assert response.content == path.read_bytes()
    assert torch.equal(load(response.content)["head.weight"], torch.full((3, 4), 10.0))


def test_only_names_the_database_lists_are_served(api: Api) -> None:
    job_id = submit(api)["id"]
    add_checkpoint(api, job_id, "step-000010", 10)
    # On disk but not registered: not served.
    stray = api.settings.run_dir(job_id) / "checkpoints" / "step-000099"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"unregistered")
    for name in ("step-000099", "latest", "%2e%2e%2f%2e%2e%2fspec.json"):
        assert api.client.get(f"/jobs/{job_id}/checkpoints/{name}").status_code == 404
    # Registered for another job: not served for this one.
    other = submit(api)["id"]
    assert api.client.get(f"/jobs/{other}/checkpoints/step-000010").status_code == 404


def test_a_listed_checkpoint_missing_on_disk_is_404(api: Api) -> None:
    job_id = submit(api)["id"]
    add_checkpoint(api, job_id, "step-000010", 10).unlink()
    response = api.client.get(f"/jobs/{job_id}/checkpoints/step-000010")
    assert response.status_code == 404
    assert "no longer on disk" in response.json()["detail"]
