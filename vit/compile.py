"""`train.compile`: torch.compile for a training job, compiled before the first step, eager if it fails.

torch.compile compiles on the first call, so left alone the first step would take minutes and drag that interval's
images/s down. `compile_for_training` instead runs one forward and backward on a dummy batch of the step's shape
up front (restoring every random generator and dropping the gradients afterwards, so training is as if it had not
happened) and reports how long that took: the job logs it as `compile_s`, outside every images/s interval. Any
error while compiling (an unsupported op, a missing C compiler, a backend bug) leaves the job on the eager model
with a warning: compiling is an optimization, never a reason for a job to fail.

VITQ_COMPILE_BACKEND picks torch.compile's backend (default inductor; "aot_eager" checks tracing without code
generation).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from vit import rng

BACKEND_ENV = "VITQ_COMPILE_BACKEND"
DEFAULT_BACKEND = "inductor"


def wanted(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """auto: compile on CUDA only (on the CPU the compile time is rarely won back: ViT's time there is in the
    matmuls, which compiling does not speed up)."""
    return device.type == "cuda" if setting == "auto" else setting


@dataclass(frozen=True)
class Compiled:
    module: nn.Module  # the compiled module, or the one given when compiling failed
    seconds: float  # spent compiling (and failing, if it failed)
    error: str | None = None  # why the job runs eager


def compile_for_training(
    module: nn.Module,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> Compiled:
    """torch.compile(module), compiled now for training steps on batches shaped like `images` (module docstring).

    `autocast` is the context the steps run in (guards on it would otherwise recompile at the first step).
    """
    device = images.device
    backend = os.environ.get(BACKEND_ENV, DEFAULT_BACKEND)
    # An OptimizedModule at run time (typed as a plain callable): .train() and .eval() reach the original.
    compiled = cast(nn.Module, torch.compile(module, backend=backend))
    saved = rng.capture(device)
    module.train()
    started = time.perf_counter()
    try:
        with autocast():
            loss = F.cross_entropy(compiled(images).float(), labels)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # any failure to compile: train eager (module docstring)
        torch._dynamo.reset()  # drop whatever was half-compiled and its guards
        reason = " ".join(str(error).split())[:300]
        return Compiled(module, time.perf_counter() - started, f"{type(error).__name__}: {reason}")
    finally:
        for parameter in module.parameters():
            parameter.grad = None
        rng.restore(saved, device)
    return Compiled(compiled, time.perf_counter() - started)
