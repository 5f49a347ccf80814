"""Two gloo processes under torchrun train like one process with the same global batch and seed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit.config import JobSpec
from vit.distributed import setup, teardown
from vit.trainer import Trainer

SPEC = {
    "kind": "pretrain",
    "model": TINY_MODEL,
    # No augmentation and no dropout: the runs differ only in how the arithmetic is split across processes.
    "data": {**SYNTHETIC, "synthetic_size": 256, "augment": False},
    "optim": {"warmup_steps": 2},
    "train": {"steps": 8, "batch_size": 32, "log_every": 1, "eval_every": 4, "checkpoint_every": 4},
    "resources": {"device": "cpu"},
}
# Both runs see the same 32 images per step (vit.data's sampler makes the global batch world-size independent);
# the per-step loss differs only by float32 rounding: two means of 16 averaged by DDP's all-reduce instead of
# one mean of 32. That is ~1e-7 relative per step, grown a little by 8 Adam steps; 1e-4 leaves a wide margin
# while any real mismatch (a wrong shard, a missing all-reduce, a different seed) moves the loss by >1e-3.
TOLERANCE = 1e-4


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    single, double = tmp_path / "single", tmp_path / "double"
    run([sys.executable, "-m", "vit.train", str(spec), "--out", str(single)])
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "vit.train",
            str(spec),
            "--out",
            str(double),
        ]
    )

    one, two = records(single), records(double)
    # Rank 0 alone writes: every step once, in order, with the same keys.
    assert [(r["step"], sorted(r)) for r in two] == [(r["step"], sorted(r)) for r in one]
    losses = [(a["loss"], b["loss"]) for a, b in zip(one, two, strict=True) if "loss" in a]
    assert len(losses) == 8 and abs(losses[-1][0] - losses[0][0]) > 1e-3
    for expected, got in losses:
        assert got == pytest.approx(expected, abs=TOLERANCE)
    for a, b in zip(one, two, strict=True):
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], abs=TOLERANCE)
        if "images_per_s" in a:
            assert b["images_per_s"] > 0

    # The checkpoint holds both ranks' RNG states and the same weights as the single process's.
    state = torch.load(double / "checkpoints" / "step-000008" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2
    w1 = load_file(str(single / "checkpoints" / "step-000008" / "model.safetensors"))
    w2 = load_file(str(double / "checkpoints" / "step-000008" / "model.safetensors"))
    for key, value in w1.items():
        torch.testing.assert_close(w2[key], value, rtol=0, atol=TOLERANCE)


EVAL_SPEC = {
    **SPEC,
    "train": {"steps": 1, "batch_size": 32},
    "eval": {"few_shot": [1, 2], "batch_size": 8},
}


def _evaluate_on_rank(rank: int, world_size: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ctx = setup("cpu")
    try:
        trainer = Trainer(JobSpec.model_validate(EVAL_SPEC), Path(run_dir), ctx)
        results = trainer.evaluate()
        shares = {"val": len(trainer.val_loader.sampler), "few_shot": len(trainer.few_shot_loader.sampler)}  # type: ignore[arg-type,union-attr]
        trainer.close()
        Path(run_dir, f"rank{rank}.json").write_text(json.dumps({"results": results, "shares": shares}))
    finally:
        teardown(ctx)


@pytest.mark.timeout(120)
def test_ranks_share_the_evaluation_and_all_get_the_result(tmp_path: Path) -> None:
    # Rank 0 evaluating alone left the others blocked in the next all-reduce for as long as it took, past the
    # process group's timeout on a large split; each rank evaluates its share and the figures are reduced.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    double = tmp_path / "double"
    double.mkdir()
    mp.spawn(_evaluate_on_rank, args=(2, port, str(double)), nprocs=2, join=True)

    single = tmp_path / "single"
    single.mkdir()
    trainer = Trainer(JobSpec.model_validate(EVAL_SPEC), single, setup("cpu"))
    expected = trainer.evaluate()
    trainer.close()
    assert sorted(expected) == ["few_shot_1", "few_shot_2", "val_loss", "val_top1"]
    ranks = [json.loads((double / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank in ranks:
        assert sorted(rank["results"]) == sorted(expected)
        for key, value in expected.items():
            assert rank["results"][key] == pytest.approx(value, abs=TOLERANCE), key
    # 24 validation images (6 of each class's 64) and 4 classes x 2 shots of support: half each.
    assert [rank["shares"] for rank in ranks] == [{"val": 12, "few_shot": 4}] * 2
    # Only rank 0 wrote the run directory's files.
    assert len(records(double)) == 1
    assert sorted(p.name for p in double.iterdir()) == [
        "metrics.jsonl",
        "rank0.json",
        "rank1.json",
        "spec.json",
    ]
