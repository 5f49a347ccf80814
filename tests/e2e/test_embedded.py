"""The embedded default end to end: SQLite, kombu's SQLAlchemy transport on a second SQLite file (no server),
the real API and one real `python -m worker`, as `vitq serve` runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.core.settings import Settings

from .stack import Stack, running_stack, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(home=tmp_path_factory.mktemp("embedded"), heartbeat_seconds=1)
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    with running_stack(settings) as stack:
        stack.start_worker()
        yield stack


def test_pretrain_then_fine_tune_on_the_embedded_default(stack: Stack, tmp_path: Path) -> None:
    pretrain = stack.post(tiny_spec(steps=100, checkpoint_every=50))
    finetune = stack.post(
        {**tiny_spec(steps=10, checkpoint_every=0), "kind": "finetune", "init": {"from_job": pretrain["id"]}}
    )
    assert finetune["wait_reason"]

    # The worker's own samples (sys/*) may come first: wait for the trainer's, while it runs.
    stack.wait_for(
        pretrain["id"],
        lambda j: j["status"] == "running" and "loss" in j["latest_metrics"],
        what="the trainer's metrics",
    )
    done = stack.wait_status(pretrain["id"], "succeeded")
    assert done["step"] == 100 and stack.metric_steps(pretrain["id"], "loss")[-1] == 100
    assert [c["name"] for c in stack.checkpoints(pretrain["id"])][-1] == "step-000100"

    tuned = stack.wait_status(finetune["id"], "succeeded")
    assert tuned["step"] == 10
    log = stack.client.get(f"/jobs/{finetune['id']}/logs").text
    assert "step-000100" in log  # started from the pretrain's latest checkpoint

    download = stack.client.get(f"/jobs/{pretrain['id']}/checkpoints/step-000100")
    assert download.status_code == 200 and len(download.content) > 1000
