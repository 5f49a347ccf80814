"""A transfer table end to end on PostgreSQL + Redis: the real API, two real `python -m worker` processes, a tiny
pretrain on the digits, then its transfer to the digits and an image folder (few-shot probes and fine-tunes run
as children); the table must hold exactly what the children stored."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from api.core.db import scratch_database
from api.core.settings import Settings

from .stack import Stack, running_stack, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("transfer")
    with scratch_database(pg_url, "vitq_e2e_transfer") as url:
        settings = Settings(
            home=home, database_url=url, broker_url=redis_url, queue=f"vitq-e2e-{uuid.uuid4().hex[:10]}"
        )
        with running_stack(settings) as stack:
            stack.start_worker()
            stack.start_worker()  # children run side by side, as a sweep's do
            yield stack


def write_folder(root: Path) -> None:
    """Three classes of flat colours (a few shades each), with train/ and val/ folders."""
    for split, count in (("train", 6), ("val", 3)):
        for index, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                colour = [20 * i] * 3
                colour[index] = 255
                Image.new("RGB", (16, 16), tuple(colour)).save(root / split / name / f"{i}.png")


def test_a_transfer_table_from_a_pretrain(stack: Stack) -> None:
    write_folder(stack.settings.resolved_data_dir / "colours")
    pretrain = stack.post(tiny_spec(steps=30, checkpoint_every=0, data={"dataset": "digits"}))
    transfer: dict[str, Any] = {
        "name": "e2e",
        "source": {"from_job": pretrain["id"]},
        "base": {"train": {"batch_size": 16, "log_every": 5}, "resources": {"device": "cpu"}},
        "datasets": [{"dataset": "digits"}, {"dataset": "imagefolder", "root": "colours", "num_workers": 0}],
        "few_shot": [1, 5],
        "finetune": {"train": {"steps": 10}, "optim": {"warmup_steps": 2}},
    }
    response = stack.client.post("/transfers", json=transfer)
    assert response.status_code == 201, response.text
    transfer_id = response.json()["id"]

    deadline = time.monotonic() + 300
    while not (shown := stack.client.get(f"/transfers/{transfer_id}").json())["finished"]:
        assert time.monotonic() < deadline, shown["status_counts"]
        time.sleep(0.5)
    assert shown["status_counts"] == {"succeeded": 4}, [(j["name"], j["error"]) for j in shown["jobs"]]
    assert stack.job(pretrain["id"])["status"] == "succeeded"

    table = shown["table"]
    keys = [c["key"] for c in table["columns"]]
    assert keys == ["few_shot_1", "few_shot_5", "val_top1"]
    assert [r["dataset"] for r in table["rows"]] == ["digits", "colours"]
    for row in table["rows"]:
        # Each cell is its child's last stored value, read back through the metrics route.
        for key, role in (("few_shot_1", "probe"), ("few_shot_5", "probe"), ("val_top1", "finetune")):
            series = stack.client.get(f"/jobs/{row[role]}/metrics", params={"names": key}).json()["series"]
            assert row["values"][key] == series[key]["values"][-1]
            assert 0.0 <= row["values"][key] <= 1.0
        # The probe evaluated the pretrained weights at step 0 and trained nothing; the fine-tune trained.
        assert stack.metric_steps(row["probe"], "few_shot_5") == [0]
        assert stack.metric_steps(row["probe"], "loss") == []
        probe = stack.job(row["probe"])
        assert (probe["step"], probe["total_steps"], probe["progress"]) == (0, 0, 1.0)
        assert stack.metric_steps(row["finetune"], "val_top1") == [10]
    for key in keys:
        assert table["mean"][key] == pytest.approx(sum(r["values"][key] for r in table["rows"]) / 2)
    # A 3-class folder of flat colours is easy: the pretrained digits features separate it from 5 shots.
    assert table["rows"][1]["values"]["few_shot_5"] >= 0.5

    lines = list(csv.reader(io.StringIO(stack.client.get(f"/transfers/{transfer_id}/table.csv").text)))
    assert lines[0] == ["dataset", "1-shot", "5-shot", "fine-tune"]
    expected = [(r["dataset"], r["values"]) for r in table["rows"]] + [("mean", table["mean"])]
    assert [(line[0], dict(zip(keys, map(float, line[1:]), strict=True))) for line in lines[1:]] == expected
