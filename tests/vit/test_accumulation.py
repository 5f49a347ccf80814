"""The global batch on any number of processes: train.batch_size is what the optimizer sees, however it is split
into processes and micro batches; the inner micro batches do no all-reduce; a stop that arrives part-way through
an accumulation cycle completes the cycle and resumes exactly."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit.config import JobSpec
from vit.distributed import DistContext, setup, teardown
from vit.trainer import StopRequest, Trainer

STEPS = 4


def accumulation_spec(micro_batch_size: int | None) -> dict[str, Any]:
    return {
        "kind": "finetune",  # from scratch: SGD, whose update is linear in the gradient (see TOLERANCE)
        "model": TINY_MODEL,
        # 921 training images: 3 global batches of 256 per epoch, so the run also crosses an epoch boundary.
        "data": {**SYNTHETIC, "synthetic_size": 1024, "augment": False},
        "optim": {"lr": 0.3, "warmup_steps": 1},
        "train": {"steps": STEPS, "batch_size": 256, "micro_batch_size": micro_batch_size, "log_every": 1},
        "resources": {"device": "cpu"},
    }


# The splits differ only in float32 summation order (~1e-7 relative in the gradient); SGD moves the weights by
# lr times the gradient, so they agree to ~1e-8. A wrong share of the batch, a missing 1/accumulation or a
# doubled all-reduce moves them by >1e-3 (asserted below: the weights moved that much).
TOLERANCE = 1e-5


def _train(spec: dict[str, Any], run_dir: Path, ctx: DistContext) -> Trainer:
    trainer = Trainer(JobSpec.model_validate(spec), run_dir, ctx)
    trainer.restore()
    return trainer


def _rank(rank: int, world_size: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ctx = setup("cpu")
    try:
        trainer = _train(accumulation_spec(64), Path(run_dir), ctx)
        assert isinstance(trainer.ddp, DistributedDataParallel)
        calls = [0]

        # Unannotated: DDP checks the annotation is GradBucket itself, and this module's annotations are strings.
        def counting_allreduce(state, bucket):  # type: ignore[no-untyped-def]
            calls[0] += 1
            return allreduce_hook(state, bucket)

        trainer.ddp.register_comm_hook(None, counting_allreduce)
        assert trainer.train()
        trainer.close()
        # The tiny model's gradients fit one bucket: one all-reduce per optimizer step, none per micro batch.
        Path(run_dir, f"allreduces-{rank}").write_text(str(calls[0]))
    finally:
        teardown(ctx)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors"))


@pytest.mark.timeout(240)
def test_one_batch_micro_batches_and_two_processes_give_the_same_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    whole, micro, double = tmp_path / "whole", tmp_path / "micro", tmp_path / "double"
    for run_dir in (whole, micro, double):
        run_dir.mkdir()
    _train(accumulation_spec(None), whole, setup("cpu")).train()  # one batch of 256
    _train(accumulation_spec(64), micro, setup("cpu")).train()  # 4 micro batches of 64
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(double)), nprocs=2, join=True)  # 2 micro batches of 64 on each of 2

    assert [(double / f"allreduces-{rank}").read_text() for rank in range(2)] == [str(STEPS)] * 2
    expected = _weights(whole)
    initial = Trainer(JobSpec.model_validate(accumulation_spec(None)), tmp_path, setup("cpu")).model
    moved = max((value - initial.state_dict()[key]).abs().max().item() for key, value in expected.items())
    assert moved > 1e-3
    for other in (micro, double):
        got = _weights(other)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=TOLERANCE, msg=f"{other.name}: {key}")


class _StopDuringForward(StopRequest):
    """Turns on during the `forward`-th forward pass (counted from 1), as a SIGTERM arriving mid-cycle would."""

    def __init__(self, trainer: Trainer, forward: int) -> None:
        self.requested = False
        self.forwards = 0

        def count(*_: Any) -> None:
            self.forwards += 1
            if self.forwards == forward:
                self.requested = True

        trainer.model.register_forward_pre_hook(count)


def test_a_stop_during_an_accumulation_cycle_finishes_the_step_and_resumes_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    # Every random draw on: crops and flips, dropout, drop-path, mixup/cutmix and random erasing; and the EMA.
    spec = JobSpec.model_validate(
        {
            "kind": "pretrain",
            "model": {**TINY_MODEL, "drop_rate": 0.1, "drop_path_rate": 0.2},
            "data": {**SYNTHETIC, "augment": True, "mixup": 0.8, "cutmix": 1.0, "random_erasing": 0.25},
            "optim": {"warmup_steps": 1},
            "train": {
                "steps": 5,
                "batch_size": 32,
                "micro_batch_size": 8,
                "label_smoothing": 0.1,
                "ema_decay": 0.9,
            },
            "resources": {"device": "cpu"},
        }
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    _train(spec.model_dump(), straight, setup("cpu")).train()

    first = Trainer(spec, resumed, setup("cpu"))
    first.restore()
    first.stop = _StopDuringForward(first, forward=4 + 2)  # the second of step 2's four micro batches
    assert first.train() is False
    assert first.step == 2  # the cycle completed: no half-accumulated gradient is dropped or carried over
    second = Trainer(spec, resumed, setup("cpu"))
    assert second.restore() == 2
    assert second.train()

    for weights in ("model.safetensors", "ema.safetensors"):
        expected = load_file(str(straight / "checkpoints" / "step-000005" / weights))
        got = load_file(str(resumed / "checkpoints" / "step-000005" / weights))
        for key, value in expected.items():
            assert torch.equal(got[key], value), (weights, key)
