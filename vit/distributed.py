"""Process-group setup from torchrun's environment; a single process needs no group at all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # Under nccl, a gloo group for the per-step stop check: a CPU collective that never makes the host wait for
    # the GPU, where an nccl all-reduce read back with .item() would sync every step.
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def pick_device(preference: str, local_rank: int) -> torch.device:
    """Device "auto" is CUDA when there is a GPU, else the CPU; each process takes the GPU of its local rank."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("resources.device is cuda but no CUDA device is available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def setup(device_preference: str) -> DistContext:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (absent: one process) and join the group: nccl on CUDA, gloo on CPU."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Passing the device id binds NCCL's communicator eagerly to this rank's GPU.
        device_id = device if device.type == "cuda" else None
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, device_id=device_id)
    control_group = dist.new_group(backend="gloo") if world_size > 1 and device.type == "cuda" else None
    return DistContext(rank, world_size, local_rank, device, control_group)


def teardown(ctx: DistContext, *, wait_for_others: bool = True) -> None:
    if ctx.distributed and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum of each value over all ranks (the values themselves in a single process)."""
    if not ctx.distributed:
        return values
    # float64 keeps sums of many losses exact enough to compare runs at 1e-6.
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def max_over_ranks(ctx: DistContext, value: int) -> int:
    """The largest of every rank's small integer, on every rank (one all-reduce on the control group)."""
    if not ctx.distributed:
        return value
    on_host = ctx.control_group is not None or ctx.device.type == "cpu"
    tensor = torch.tensor([value], dtype=torch.int32, device="cpu" if on_host else ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return int(tensor.item())


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's object, indexed by rank (used for per-rank RNG states in checkpoints)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
