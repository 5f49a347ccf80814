"""Two gloo processes under torchrun train like one process with the same global batch and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

SPEC = {
    "kind": "pretrain",
    "model": {
        "variant": "Ti/4",
        "image_size": 16,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_dim": 64,
    },
    # No augmentation and no dropout: the runs differ only in how the arithmetic is split across processes.
    "data": {
        "dataset": "synthetic",
        "synthetic_size": 256,
        "synthetic_classes": 4,
        "augment": False,
        "num_workers": 0,
    },
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
