"""Training on packed shards: two gloo processes reading over HTTP train like one process reading from disk
(subset, held-out validation and the few-shot probe included), and N steps + resume + N steps equal 2N steps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.vit.shard_helpers import http_server, packed_folder
from tests.vit.test_distributed import TOLERANCE, records, run
from tests.vit.test_train import _StopAtStep, final_weights, train_losses
from tests.vit.tiny_specs import TINY_MODEL
from vit.config import JobSpec
from vit.distributed import setup
from vit.train import main
from vit.trainer import Trainer


def _spec(root: str, **data: Any) -> dict[str, Any]:
    return {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": {"dataset": "shards", "root": root, "num_workers": 1, **data},
        "optim": {"warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 8, "log_every": 1},
        "eval": {"few_shot": [1], "batch_size": 8},
        "resources": {"device": "cpu"},
    }


@pytest.mark.timeout(200)
def test_two_gloo_processes_over_http_match_one_process_from_disk(tmp_path: Path) -> None:
    root = packed_folder(tmp_path, train=8, val=0)  # 32 images; validation held out of them
    data = {"augment": False, "subset": 5, "val_fraction": 0.25}  # 5 of each class's 6 left after 2 held out
    single = tmp_path / "single"
    (tmp_path / "disk.yaml").write_text(yaml.safe_dump(_spec(str(root), **data)))
    assert main([str(tmp_path / "disk.yaml"), "--out", str(single)]) == 0
    double = tmp_path / "double"
    with http_server(root) as url:
        (tmp_path / "http.yaml").write_text(yaml.safe_dump(_spec(url, **data)))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
        run([*torchrun, "-m", "vit.train", str(tmp_path / "http.yaml"), "--out", str(double)])

    one, two = records(single), records(double)
    assert [sorted(r) for r in two] == [sorted(r) for r in one]
    losses = [(a["loss"], b["loss"]) for a, b in zip(one, two, strict=True) if "loss" in a]
    assert len(losses) == 6 and abs(losses[-1][0] - losses[0][0]) > 1e-3
    for expected, got in losses:
        assert got == pytest.approx(expected, abs=TOLERANCE)
    final_one, final_two = one[-1], two[-1]
    for key in ("val_loss", "val_top1", "few_shot_1"):
        assert final_two[key] == pytest.approx(final_one[key], abs=TOLERANCE), key


def test_resume_on_shards_continues_exactly_like_straight_training(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = packed_folder(tmp_path, train=6, val=2)
    # Augmentation in the training process (no workers): its crops are part of the checkpointed RNG state.
    spec = _spec(str(root), num_workers=0, augment=True)
    spec["eval"] = {"batch_size": 8}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([str(tmp_path / "spec.yaml"), "--out", str(straight)]) == 0

    resumed.mkdir()
    trainer = Trainer(JobSpec.model_validate(spec), resumed, setup("cpu"))
    trainer.restore()
    trainer.stop = _StopAtStep(trainer, 4)  # 24 images in batches of 8: step 4 is in the second epoch
    assert trainer.train() is False
    trainer.close()
    assert main([str(tmp_path / "spec.yaml"), "--out", str(resumed)]) == 0

    expected, got = train_losses(straight), train_losses(resumed)
    assert list(got) == list(expected) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    for key, value in final_weights(straight).items():
        torch.testing.assert_close(final_weights(resumed)[key], value, rtol=0, atol=1e-6)
