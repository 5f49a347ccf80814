"""Image transforms: training augmentation and evaluation resizing, both ending in [-1, 1] tensors.

Every transform takes a uint8 image (a PIL image or a (C, H, W) uint8 tensor) and returns a float32 (3, S, S)
tensor. Normalization uses mean = std = 0.5 per channel, as the ViT reference code does ((x - 127.5) / 127.5),
so pretrained weights from it and from timm's ViT ports see the input range they were trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from vit.config import AUGMENT_PRESETS, AugmentSpec

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

Transform = Callable[[object], torch.Tensor]


# The preset names of `data.augment` (vit.config, free of torch, so that the API validates them).
PHOTO = AUGMENT_PRESETS["photo"]
# 32-px photos (CIFAR): keeping at least half the area is close to the usual pad-4-and-crop recipe for CIFAR
# trained at its own size.
SMALL_PHOTO = AUGMENT_PRESETS["light"]
# 8-px digits fill their frame.
DIGITS = AUGMENT_PRESETS["symbol"]
# Synthetic class patterns are spatial layouts: mirroring one makes a different pattern, so no flip.
SYNTHETIC = AugmentSpec(crop_scale=(0.5, 1.0), flip=False)


def _to_unit_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD), v2.ToPureTensor()]


def normalize_uint8(image: torch.Tensor) -> torch.Tensor:
    """A uint8 (C, H, W) tensor already at the model's size -> float32 in [-1, 1] (the evaluation path of the
    in-memory datasets: the same mapping as the transforms' last steps, without their per-call overhead)."""
    return image.to(torch.float32).sub_(127.5).div_(127.5)


def train_transform(image_size: int, augmentation: AugmentSpec | None) -> Transform:
    """Random resized crop (+ flip) to image_size; None: the evaluation transform (no augmentation)."""
    if augmentation is None:
        return eval_transform(image_size)
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=augmentation.crop_scale, antialias=True),
    ]
    if augmentation.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, *_to_unit_float()])


def eval_transform(image_size: int) -> Transform:
    """Resize the shorter side to image_size, then center-crop a square (nothing is lost from square images)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            *_to_unit_float(),
        ]
    )
