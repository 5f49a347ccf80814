"""Named training recipes with the papers' values: `recipe: deit-small` in a spec fills every field it names that
the spec leaves out (a field the spec sets wins), and `JobSpec.resolved()` stores the result, so a job's stored
spec says exactly what it trained with. Free of torch: the API resolves specs too.

The job's scale (train.steps, train.batch_size, warmup) stays the spec's: the papers' batches of 1024-4096 and
hundreds of epochs are not every dataset's. Where a paper scales its learning rate with the batch (DeiT, MAE),
the recipe does the same with the spec's train.batch_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vit.config import JobSpec


@dataclass(frozen=True)
class Recipe:
    source: str
    values: dict[str, dict[str, Any]]  # spec section -> field -> value
    # (lr, batch): lr = lr * train.batch_size / batch, the papers' linear scaling rule (unless optim.lr is set).
    lr_per_batch: tuple[float, int] | None = None


def _augreg(randaug_magnitude: int | None, mixup: float) -> Recipe:
    # big_vision configs/vit_i21k.py: randaug(2, m) and mixup(p); magnitudes are on TF's 0-10 scale and go past
    # it (15, 20), so timm's cap (mmax, default 10) is lifted to the magnitude.
    data: dict[str, Any] = {"mixup": mixup}
    if randaug_magnitude is not None:
        data["rand_augment"] = f"rand-n2-m{randaug_magnitude}-mmax{max(10, randaug_magnitude)}"
    return Recipe(
        source="Steiner et al. 2021, How to train your ViT (AugReg); big_vision configs/vit_i21k.py",
        # Adam, lr 1e-3, weight decay 0.1, cosine, clip 1 (batch 4096, 10k warmup steps: the spec's to set).
        values={
            "data": data,
            "optim": {
                "name": "adamw",
                "lr": 1e-3,
                "weight_decay": 0.1,
                "betas": (0.9, 0.999),
                "schedule": "cosine",
                "clip_grad_norm": 1.0,
            },
        },
    )


# DeiT's augmentation and optimiser, which MAE's (and BEiT's) fine-tuning recipe takes over unchanged.
DEIT_AUGMENTATION: dict[str, Any] = {
    "rand_augment": "rand-m9-mstd0.5-inc1",
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "random_erasing": 0.25,
}
DEIT_OPTIM: dict[str, Any] = {
    "name": "adamw",
    "weight_decay": 0.05,
    "betas": (0.9, 0.999),
    "schedule": "cosine",
    "clip_grad_norm": 0.0,
}


def _deit(variant: str) -> Recipe:
    # Touvron et al. 2021, Table 9 (one recipe for Ti, S and B): AdamW lr 5e-4 x batch/512, wd 0.05, cosine, no
    # clipping, label smoothing 0.1, stochastic depth 0.1, RandAugment m9 mstd0.5, mixup 0.8, CutMix 1.0,
    # erasing 0.25, EMA 0.99996 (the reference main.py); repeated augmentation is not implemented.
    return Recipe(
        source="Touvron et al. 2021, Training data-efficient image transformers (DeiT), Table 9",
        values={
            "model": {"variant": variant, "drop_path_rate": 0.1},
            "data": DEIT_AUGMENTATION,
            "optim": DEIT_OPTIM,
            "train": {"label_smoothing": 0.1, "ema_decay": 0.99996},
        },
        lr_per_batch=(5e-4, 512),
    )


RECIPES: dict[str, Recipe] = {
    # AugReg's augmentation levels (the paper's Figure 4 picks one per model and data size).
    "augreg-none": _augreg(None, 0.0),
    "augreg-light1": _augreg(0, 0.0),  # randaug(2, 0) still rotates, shears, equalizes...: not nothing
    "augreg-light2": _augreg(10, 0.2),
    "augreg-medium1": _augreg(15, 0.2),
    "augreg-medium2": _augreg(15, 0.5),
    "augreg-strong1": _augreg(20, 0.5),
    "augreg-strong2": _augreg(20, 0.8),
    "deit-tiny": _deit("Ti/16"),
    "deit-small": _deit("S/16"),
    "deit-base": _deit("B/16"),
    # He et al. 2021 (MAE), fine-tuning ViT-B (FINETUNE.md): AdamW blr 5e-4 x batch/256, wd 0.05, layer decay
    # 0.65 (0.75 for L and H), drop path 0.1, RandAugment m9 mstd0.5, mixup 0.8, CutMix 1.0, smoothing 0.1,
    # erasing 0.25. The same recipe BEiT uses; for fine-tuning from pretrained weights (kind finetune).
    "mae-finetune": Recipe(
        source="He et al. 2021, Masked Autoencoders Are Scalable Vision Learners, fine-tuning ViT-B",
        values={
            "model": {"drop_path_rate": 0.1},
            "data": DEIT_AUGMENTATION,
            "optim": {**DEIT_OPTIM, "layer_decay": 0.65},
            "train": {"label_smoothing": 0.1},
        },
        lr_per_batch=(5e-4, 256),
    ),
}


def apply_recipe(spec: JobSpec, recipe: Recipe) -> JobSpec:
    """`spec` with the recipe's values in every field it leaves unset (each section is validated again)."""
    updates: dict[str, Any] = {}
    for section, values in recipe.values.items():
        current = getattr(spec, section)
        given = {name: getattr(current, name) for name in current.model_fields_set}
        updates[section] = type(current).model_validate({**values, **given})
    if recipe.lr_per_batch is not None and "lr" not in spec.optim.model_fields_set:
        lr, batch = recipe.lr_per_batch
        optim = updates.get("optim", spec.optim)
        updates["optim"] = type(optim).model_validate(
            {
                **{n: getattr(optim, n) for n in optim.model_fields_set},
                "lr": lr * spec.train.batch_size / batch,
            }
        )
    return spec.model_copy(update=updates)
