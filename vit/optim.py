"""Optimizer and learning-rate schedule for a resolved spec.

Weight decay applies to matrices only: position embedding, class token, biases and norm parameters are all
1-D (or, for the embeddings, named) and excluded, as is common practice for ViT. Layer-wise lr decay
(`optim.layer_decay` < 1, BEiT's fine-tuning rule) uses timm's grouping: one group per layer and decay kind,
each at lr * layer_decay^(layers - 1 - layer), which the schedule then scales as a whole.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vit.config import OptimSpec


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed matrices, and non-decayed biases, norms and the embeddings the model names in
    `no_weight_decay()` (pos_embed, cls_token); empty groups are left out."""
    no_decay_names: set[str] = set(getattr(model, "no_weight_decay", set)())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.removeprefix("module.") in no_decay_names:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, optim: OptimSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, no Nesterov) over `param_groups` (or timm's layer-decay groups); `optim` must be
    resolved."""
    if optim.lr is None or optim.weight_decay is None:
        raise ValueError("build_optimizer needs a resolved spec (JobSpec.resolved())")
    if optim.layer_decay is not None and optim.layer_decay < 1.0:
        groups = param_groups_layer_decay(
            model,
            optim.weight_decay,
            no_weight_decay_list=sorted(getattr(model, "no_weight_decay", set)()),
            layer_decay=optim.layer_decay,
        )
        for group in groups:
            group["lr"] = optim.lr * group.pop("lr_scale")  # the schedule's base lr of the group
    else:
        groups = param_groups(model, optim.weight_decay)
    # The fused kernels are the fastest path on CUDA; elsewhere torch picks foreach by itself.
    fused = True if device.type == "cuda" else None
    if optim.name == "adamw":
        betas = optim.betas or (0.9, 0.999)
        return torch.optim.AdamW(groups, lr=optim.lr, betas=betas, fused=fused)
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum or 0.0, nesterov=False, fused=fused
        )
    raise ValueError(f"unknown optimizer {optim.name!r}")


class LrFactor:
    """Multiplier of the base lr at a step: linear warmup from 0, then linear/cosine decay to 0 or constant.

    A plain object of primitives, so LambdaLR's state_dict stores it and a checkpoint restores it.
    """

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int) -> None:
        if schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown schedule {schedule!r}")
        if total_steps < 1:
            raise ValueError("total_steps must be at least 1")
        self.schedule = schedule
        # A warmup as long as the run would never reach the peak lr (and never decay).
        self.warmup_steps = min(warmup_steps, total_steps - 1)
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSpec, total_steps: int) -> LambdaLR:
    """Per-optimizer-step schedule; `scheduler.step()` after each `optimizer.step()`."""
    factor = LrFactor(optim.schedule or "constant", optim.warmup_steps or 0, total_steps)
    return LambdaLR(optimizer, lr_lambda=factor)


def load_training_state(
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
) -> None:
    """Resume from a checkpoint's optimizer moments and schedule position, with this spec's hyperparameters.

    A saved state also holds the hyperparameters it ran with (lr, weight decay, betas, momentum, the schedule's
    warmup and length). Restoring those would silently ignore a changed spec: raising train.steps to continue a
    finished run would keep the old schedule, already decayed to lr 0. With an unchanged spec the result is the
    saved state exactly (the lr is recomputed by the same formula LambdaLR uses).
    """
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    for group, fresh in zip(optimizer.param_groups, hyperparameters, strict=True):
        group.update(fresh)
    # Only the position (step count); the schedule's shape and base lrs stay the ones built from this spec.
    position = {k: v for k, v in scheduler_state.items() if k not in ("lr_lambdas", "base_lrs", "_last_lr")}
    scheduler.load_state_dict({**position, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    lrs = [
        base * factor(scheduler.last_epoch)
        for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports; LambdaLR has no public way to recompute it
