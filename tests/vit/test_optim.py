"""Parameter groups, optimizers and learning-rate schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vit.config import JobSpec
from vit.model import create_model
from vit.optim import LrFactor, build_optimizer, build_scheduler, param_groups


def _tiny_model() -> torch.nn.Module:
    return create_model("Ti/4", num_classes=3, image_size=8, embed_dim=16, depth=1, num_heads=2, mlp_dim=32)


def test_no_weight_decay_on_embeddings_biases_and_norms() -> None:
    model = _tiny_model()
    decayed, plain = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}

    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "head.bias"} <= plain_names
    assert {"blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "patch_embed.proj.bias"} <= plain_names
    assert decayed_names == {
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "head.weight",
    }
    assert decayed_names.isdisjoint(plain_names)
    assert len(decayed_names) + len(plain_names) == len(names)


def test_optimizer_follows_the_resolved_spec() -> None:
    model = _tiny_model()
    cpu = torch.device("cpu")
    pretrain = JobSpec(kind="pretrain", optim={"betas": (0.8, 0.99)}).resolved()
    adamw = build_optimizer(model, pretrain.optim, cpu)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.99) and adamw.defaults["lr"] == 1e-3
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]

    sgd = build_optimizer(model, JobSpec(kind="finetune").resolved().optim, cpu)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is False
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0, 0.0]


def _lrs(schedule: str, warmup: int, total: int) -> list[float]:
    model = _tiny_model()
    spec = JobSpec(
        kind="pretrain", optim={"lr": 1.0, "warmup_steps": warmup, "schedule": schedule}
    ).resolved()
    optimizer = build_optimizer(model, spec.optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, spec.optim, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_warmup_then_linear_decay_to_zero() -> None:
    lrs = _lrs("linear", warmup=4, total=12)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    # 8 decay steps from the peak: 1 - k/8.
    assert lrs[4:] == pytest.approx([1.0 - k / 8 for k in range(8)])
    assert LrFactor("linear", 4, 12)(12) == 0.0


def test_cosine_decay_reaches_zero_at_the_end() -> None:
    lrs = _lrs("cosine", warmup=2, total=10)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert LrFactor("cosine", 2, 10)(10) == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))


def test_constant_after_warmup() -> None:
    assert _lrs("constant", warmup=3, total=8) == pytest.approx([0.0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1])
    assert _lrs("constant", warmup=0, total=3) == [1.0, 1.0, 1.0]


def test_warmup_longer_than_the_run_is_clamped() -> None:
    factor = LrFactor("linear", warmup_steps=100, total_steps=10)
    assert factor.warmup_steps == 9
    assert factor(9) == 1.0 and factor(10) == 0.0


def test_schedule_state_round_trips_through_a_state_dict() -> None:
    model = _tiny_model()
    spec = JobSpec(kind="pretrain", optim={"lr": 1.0, "warmup_steps": 2}).resolved()
    optimizer = build_optimizer(model, spec.optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, spec.optim, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    restored_opt = build_optimizer(model, spec.optim, torch.device("cpu"))
    restored = build_scheduler(restored_opt, spec.optim, 10)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_epoch == 5
    assert restored.get_last_lr() == scheduler.get_last_lr()
