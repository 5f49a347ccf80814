"""Image transforms: training augmentation and evaluation resizing, both ending in [-1, 1] tensors.

Every transform takes a uint8 image (a PIL image or a (C, H, W) uint8 tensor) and returns a float32 (3, S, S)
tensor. Normalization uses mean = std = 0.5 per channel, as the ViT reference code does ((x - 127.5) / 127.5),
so pretrained weights from it and from timm's ViT ports see the input range they were trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import rand_augment_transform
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


def train_transform(
    image_size: int, augmentation: AugmentSpec | None, rand_augment: str | None = None
) -> Transform:
    """Random resized crop (+ flip) to image_size, then timm's RandAugment (`rand_augment`, a timm config string)
    as timm's training transform orders them; neither: the evaluation transform (no augmentation)."""
    if augmentation is None and rand_augment is None:
        return eval_transform(image_size)
    steps: list[Any] = [v2.ToImage()]
    if augmentation is None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        steps.append(v2.RandomResizedCrop(image_size, scale=augmentation.crop_scale, antialias=True))
        if augmentation.flip:
            steps.append(v2.RandomHorizontalFlip())
    if rand_augment is not None:
        # timm.data.create_transform's parameters: translations up to 45 % of the side, fills at the mean.
        fill = tuple(round(255 * m) for m in MEAN)
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": fill}
        rand_augment_ops = rand_augment_transform(rand_augment, hparams)
        for op in rand_augment_ops.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
        steps += [v2.ToPILImage(), rand_augment_ops, v2.ToImage()]
    return v2.Compose([*steps, *_to_unit_float()])


def _posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize, where keeping no bits gives a black image (as TF's RandAugment and older Pillow) rather
    than the error current Pillow raises; timm's levels reach 0 bits (Posterize at m0, PosterizeIncreasing at
    m10: AugReg's light1 and DeiT's mstd draws)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep < 1:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


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
