"""The regularization fields at work: mixup/CutMix and random erasing on the batch, RandAugment per image,
layer-wise lr decay in the optimizer, and the EMA of the weights (evaluated, checkpointed, a fine-tune's start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit.config import DataSpec, JobSpec
from vit.data.transforms import train_transform
from vit.distributed import setup
from vit.model import create_model
from vit.optim import build_optimizer, build_scheduler
from vit.recipes import RECIPES
from vit.regularize import BatchRegularizer
from vit.rng import seed_everything
from vit.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_off_by_default_the_batch_passes_and_the_loss_is_cross_entropy() -> None:
    regularizer = BatchRegularizer(DataSpec(), 0.0, 10, torch.device("cpu"))
    images, labels = torch.randn(8, 3, 4, 4), torch.arange(8)
    out, targets = regularizer(images, labels)
    assert out is images and targets is labels
    logits = torch.randn(8, 10)
    assert torch.equal(regularizer.loss(logits, targets), F.cross_entropy(logits, labels))


def test_mixup_mixes_the_batch_and_its_soft_targets() -> None:
    data = DataSpec(mixup=0.8, cutmix=1.0, random_erasing=1.0)
    regularizer = BatchRegularizer(data, 0.1, 4, torch.device("cpu"))
    seed_everything(0)  # timm draws lam from numpy
    # One grey channel expanded to three, as the device batches of the digits arrive.
    images = torch.rand(8, 1, 6, 6).expand(8, 3, 6, 6)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, targets = regularizer(images, labels)
    assert targets.shape == (8, 4)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    # One draw for the batch: each target is lam of its own smoothed label and 1 - lam of its partner's (the
    # batch reversed), smoothing 0.1 over 4 classes giving 0.925 and 0.025.
    smooth = F.one_hot(labels, 4) * 0.9 + 0.025
    lam = (targets[0, labels[0]] - 0.025) / 0.9
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0))
    assert 0.0 < lam < 1.0
    assert not torch.equal(mixed, images)
    logits = torch.randn(8, 4)
    expected = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    torch.testing.assert_close(regularizer.loss(logits, targets), expected)


def test_rand_augment_changes_images_per_draw_and_every_recipe_string_parses() -> None:
    transform = train_transform(16, None, "rand-n2-m10-mmax10")
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(8)]
    assert all(out.shape == (3, 16, 16) and out.dtype == torch.float32 for out in outputs)
    assert all(out.min() >= -1 and out.max() <= 1 for out in outputs)
    assert len({out.sum().item() for out in outputs}) > 1
    # Every recipe's string parses, and its draws run: 100 draws reach every op (timm's levels at m0 and m10
    # ask for posterize to 0 bits, which current Pillow refuses; vit.data.transforms makes that black).
    for recipe in RECIPES.values():
        text = recipe.values["data"].get("rand_augment")
        if text is not None:
            transform = train_transform(16, None, text)
            for _ in range(100):
                transform(image)


def test_layer_decay_scales_each_layer_s_lr_under_the_schedule() -> None:
    model = create_model("Ti/4", num_classes=4, image_size=16, embed_dim=32, depth=3, num_heads=2, mlp_dim=64)
    optim = (
        JobSpec.model_validate(
            {"kind": "finetune", "optim": {"name": "adamw", "lr": 0.1, "layer_decay": 0.5, "warmup_steps": 2}}
        )
        .resolved()
        .optim
    )
    optimizer = build_optimizer(model, optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, optim, total_steps=10)
    names = {id(p): n for n, p in model.named_parameters()}

    def lr_of(name: str) -> float:
        return next(g["lr"] for g in optimizer.param_groups if name in {names[id(p)] for p in g["params"]})

    for _ in range(2):  # to the end of the warmup: the factor is 1
        optimizer.step()
        scheduler.step()
    # timm's grouping, as for its own ViT: embeddings 0, blocks 1-3 (the final norm with the last), head 4.
    assert lr_of("head.weight") == pytest.approx(0.1)
    assert lr_of("blocks.2.mlp.fc1.weight") == pytest.approx(0.1 * 0.5) == lr_of("norm.weight")
    assert lr_of("blocks.0.attn.qkv.weight") == pytest.approx(0.1 * 0.5**3)
    assert lr_of("pos_embed") == pytest.approx(0.1 * 0.5**4)
    decays = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays["blocks.0.attn.qkv.weight"] == optim.weight_decay and decays["pos_embed"] == 0.0


def test_the_ema_is_the_average_the_decay_says_and_is_evaluated_and_checkpointed(tmp_path: Path) -> None:
    decay = 0.75
    spec = {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": {**SYNTHETIC, "augment": False},
        "optim": {"warmup_steps": 0, "schedule": "constant", "lr": 0.01},
        "train": {"steps": 2, "batch_size": 32, "checkpoint_every": 1, "eval_every": 1, "ema_decay": decay},
        "resources": {"device": "cpu"},
    }
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(JobSpec.model_validate(spec), run, setup("cpu"))
    trainer.restore()
    assert trainer.train()
    trainer.close()

    def weights(step: int, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(run / "checkpoints" / f"step-{step:06d}" / name))

    # timm's EMA: the first update copies the weights, then ema = decay * ema + (1 - decay) * weights.
    first, second = weights(1, "model.safetensors"), weights(2, "model.safetensors")
    assert weights(1, "ema.safetensors").keys() == first.keys()
    for key, value in weights(1, "ema.safetensors").items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0)
    for key, value in weights(2, "ema.safetensors").items():
        torch.testing.assert_close(
            value, decay * first[key] + (1 - decay) * second[key], rtol=1e-6, atol=1e-7
        )
    assert any(not torch.equal(first[k], second[k]) for k in first)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in evals if "val_top1" in line]
    assert [sorted(line) for line in evals] == [
        ["ema_val_loss", "ema_val_top1", "step", "time", "val_loss", "val_top1"]
    ] * 2
    assert evals[1]["ema_val_loss"] != evals[1]["val_loss"]

    # A fine-tune starts from either: init.ema takes the average.
    finetune = {**spec, "kind": "finetune", "train": {"steps": 1, "batch_size": 32}}
    for ema, expected in ((False, second), (True, weights(2, "ema.safetensors"))):
        (tmp_path / f"ft-{ema}").mkdir()
        start = Trainer(
            JobSpec.model_validate({**finetune, "init": {"weights": str(run), "ema": ema}}),
            tmp_path / f"ft-{ema}",
            setup("cpu"),
        )
        start.restore()
        torch.testing.assert_close(
            start.model.state_dict()["blocks.1.mlp.fc2.weight"], expected["blocks.1.mlp.fc2.weight"]
        )
        start.close()
