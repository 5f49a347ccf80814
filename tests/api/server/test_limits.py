"""Job-size limits (issue 23, item 5; api/core/limits.py): off by default; each one, from the settings or an admin's
override for one owner, refuses a job or a sweep over it with a 422 naming the field, the value and the limit, and
stores nothing. On PostgreSQL, with authentication on (the tenants of test_tenants.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from api.core import limits
from api.core.models import Job, OwnerLimit, Sweep
from tests.api.conftest import TINY_SPEC
from tests.api.server.test_tenants import Tenants, tenants  # noqa: F401 (a fixture)
from vit.config import ModelSpec
from vit.model_size import model_parameters

TINY_PARAMS = model_parameters(ModelSpec.model_validate(TINY_SPEC["model"]), num_classes=10)  # synthetic: 10
# A job as large as the example: what an owner may send when nothing is limited.
HUGE = {
    **TINY_SPEC,
    "model": {"variant": "H/14", "image_size": 1022},
    "train": {"steps": 10_000_000, "batch_size": 1_000_000, "keep_checkpoints": 1000},
}


@pytest.fixture
def limited(tenants: Tenants) -> Iterator[Tenants]:  # noqa: F811
    yield tenants
    tenants.session.execute(delete(OwnerLimit))
    tenants.session.commit()


def with_settings(owners: Tenants, **values: int | None) -> None:
    owners.client.app.state.settings = owners.settings.model_copy(update=values)  # type: ignore[attr-defined]


def stored(owners: Tenants) -> tuple[int, int]:
    session = owners.session
    return session.scalar(select(func.count()).select_from(Job)) or 0, session.scalar(
        select(func.count()).select_from(Sweep)
    ) or 0


def test_off_by_default(limited: Tenants) -> None:
    assert set(limits.LIMITS) <= set(type(limited.settings).model_fields)
    assert all(getattr(limited.settings, name) is None for name in limits.LIMITS)
    assert limited.submit(limited.alice, HUGE)["spec"]["model"]["variant"] == "H/14"


@pytest.mark.parametrize(
    ("name", "value", "spec", "loc", "what"),
    [
        (
            "max_job_params",
            TINY_PARAMS,
            TINY_SPEC,
            ["model", "variant"],
            f"model has {TINY_PARAMS:,} parameters",
        ),
        ("max_image_size", 16, TINY_SPEC, ["model", "image_size"], "image_size is 16"),
        (
            "max_job_images",
            40 * 32,
            TINY_SPEC,
            ["train", "steps"],
            "the job trains on 1,280 images (steps 40 x batch_size 32)",
        ),
        (
            "max_keep_checkpoints",
            5,
            {**TINY_SPEC, "train": {"steps": 4, "batch_size": 2, "keep_checkpoints": 5}},
            ["train", "keep_checkpoints"],
            "keep_checkpoints is 5",
        ),
    ],
)
def test_each_limit_refuses_with_a_422_and_stores_nothing(
    limited: Tenants, name: str, value: int, spec: dict[str, Any], loc: list[str], what: str
) -> None:
    with_settings(limited, **{name: value - 1})
    response = limited.client.post("/jobs", json=spec, headers=limited.alice.headers)
    assert response.status_code == 422, response.text
    said = f"{what}; the service's limit is {value - 1:,} ({name})"
    assert response.json()["detail"] == [{"loc": ["body", *loc], "msg": said, "type": "limit_exceeded"}]
    assert stored(limited) == (0, 0)
    with_settings(limited, **{name: value})  # at the limit itself a job is accepted
    assert limited.client.post("/jobs", json=spec, headers=limited.alice.headers).status_code == 201


def test_every_limit_a_job_is_over_is_named(limited: Tenants) -> None:
    with_settings(
        limited, max_job_params=10**6, max_image_size=384, max_job_images=10**9, max_keep_checkpoints=10
    )
    response = limited.client.post("/jobs", json=HUGE, headers=limited.alice.headers)
    assert response.status_code == 422
    messages = [d["msg"] for d in response.json()["detail"]]
    assert len(messages) == 4, messages
    params = model_parameters(ModelSpec(variant="H/14", image_size=1022), num_classes=10)
    assert (
        messages[0] == f"model has {params:,} parameters; the service's limit is 1,000,000 (max_job_params)"
    )
    assert stored(limited) == (0, 0)


def test_an_owners_own_limit_beats_the_default(limited: Tenants) -> None:
    with_settings(limited, max_image_size=8)
    limits.set_own(session=limited.session, owner="alice", values={"max_image_size": None})  # none for Alice
    limits.set_own(session=limited.session, owner="bob", values={"max_keep_checkpoints": 1})
    assert limited.submit(limited.alice)["owner"] == "alice"
    refused = limited.client.post("/jobs", json=TINY_SPEC, headers=limited.bob.headers)
    assert refused.status_code == 422
    assert [d["msg"] for d in refused.json()["detail"]] == [
        "image_size is 16; the service's limit is 8 (max_image_size)",
        "keep_checkpoints is 3; this owner's limit is 1 (max_keep_checkpoints)",
    ]
    # Lower than the default for one owner; unset, the default holds again.
    limits.set_own(session=limited.session, owner="alice", values={"max_image_size": 4})
    refused = limited.client.post("/jobs", json=TINY_SPEC, headers=limited.alice.headers)
    assert refused.json()["detail"][0]["msg"] == "image_size is 16; this owner's limit is 4 (max_image_size)"
    assert limits.unset_own(session=limited.session, owner="alice", names=["max_image_size"]) == 1
    refused = limited.client.post("/jobs", json=TINY_SPEC, headers=limited.alice.headers)
    assert refused.json()["detail"][0]["msg"] == "image_size is 16; the service's limit is 8 (max_image_size)"
    assert stored(limited) == (1, 0)


def test_a_sweep_with_one_child_over_a_limit_is_refused_whole(limited: Tenants) -> None:
    with_settings(limited, max_image_size=16)
    sweep = {"name": "sizes", "base": TINY_SPEC, "grid": {"model.image_size": [8, 16, 32]}}
    response = limited.client.post("/sweeps", json=sweep, headers=limited.alice.headers)
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "grid", "model.image_size"]
    assert detail["msg"] == (
        "job 3 of 3 (model.image_size=32): image_size is 32; the service's limit is 16 (max_image_size)"
    )
    assert stored(limited) == (0, 0)
    search = {
        "base": TINY_SPEC,
        "method": "random",
        "space": {"train.steps": {"int_uniform": [10, 50]}},
        "max_jobs": 3,
    }
    with_settings(limited, max_job_images=32 * 40)
    refused = limited.client.post("/sweeps", json=search, headers=limited.alice.headers)
    assert refused.status_code == 422 and "(max_job_images)" in refused.json()["detail"][0]["msg"]
    assert stored(limited) == (0, 0)


def test_the_log_limit_is_the_job_owners(limited: Tenants) -> None:
    """What the worker reads at launch (worker/supervisor.py): the owner's own, else the worker's setting."""
    job = limited.submit(limited.alice)["id"]
    settings = limited.settings.model_copy(update={"max_log_bytes": 5000})
    assert limits.log_limit(session=limited.session, job_id=job, settings=settings) == 5000
    limits.set_own(session=limited.session, owner="alice", values={"max_log_bytes": 200})
    assert limits.log_limit(session=limited.session, job_id=job, settings=settings) == 200
    limits.set_own(session=limited.session, owner="alice", values={"max_log_bytes": None})
    assert limits.log_limit(session=limited.session, job_id=job, settings=settings) is None
    with pytest.raises(ValueError, match="unknown limits max_gpus"):
        limits.set_own(session=limited.session, owner="alice", values={"max_gpus": 1})
