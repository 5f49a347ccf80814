"""Random resized crop and flip of a whole batch at once, on whatever device the batch is on.

The per-image path (vit.data.transforms: torchvision's RandomResizedCrop, then RandomHorizontalFlip) runs in
loader workers on the CPU; on a GPU the same augmentation of a whole batch is one grid_sample call:

    draw = draw_crops(len(images), height, width, augmentation, device=images.device)   # the random part
    pixels = resized_crops(images, draw, size)                                          # the deterministic part

`draw_crops` draws each image's crop box as torchvision's RandomResizedCrop.get_params does (up to 10 tries of an
area share and a log-uniform aspect ratio in [3/4, 4/3], the first box that fits is kept, else the largest
centred box of an allowed ratio), all images together with no host-device sync. `resized_crops` applies a draw as
torchvision's resized_crop followed by hflip does: bilinear, half-pixel centres (align_corners=False), source
coordinates clamped to the crop's edge pixels, values rounded to uint8 levels, then mapped to [-1, 1].
For crops enlarged to the output size (always, for images stored at the model's size) torchvision's antialias
has nothing to do, so both paths give the same pixels up to rounding (tests/vit/test_batch_augment.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vit.config import AugmentSpec

# torchvision's RandomResizedCrop defaults.
ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10


@dataclass(frozen=True)
class CropDraw:
    """Per-image crop boxes (pixels of the source image) and flips, each a (B,) tensor on the batch's device."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool

    @staticmethod
    def whole(batch: int, height: int, width: int, device: torch.device) -> CropDraw:
        """No augmentation: every image whole, unflipped (resized_crops is then a plain resize)."""
        zeros = torch.zeros(batch, dtype=torch.int64, device=device)
        return CropDraw(
            zeros, zeros, zeros + height, zeros + width, torch.zeros(batch, dtype=torch.bool, device=device)
        )


def draw_crops(
    batch: int,
    height: int,
    width: int,
    augmentation: AugmentSpec,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> CropDraw:
    """Random crop boxes and flips for `batch` images of height x width (module docstring)."""

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=generator, dtype=torch.float64)

    low, high = augmentation.crop_scale
    area = height * width * (low + (high - low) * uniform(batch, ATTEMPTS))
    log_low, log_high = math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1])
    ratio = torch.exp(log_low + (log_high - log_low) * uniform(batch, ATTEMPTS))
    # Python's round and torch.round both round half to even.
    w = torch.sqrt(area * ratio).round().long()  # (B, attempts)
    h = torch.sqrt(area / ratio).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first box that fits (0 when none does)
    found = fits.any(dim=1)
    fallback_w, fallback_h = _centre_box(height, width)
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    # randint(0, n + 1) as floor(u · (n + 1)): uniform over 0..n.
    offsets = uniform(batch, 2)
    top = torch.where(found, (offsets[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(found, (offsets[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
    if augmentation.flip:
        flip = torch.rand(batch, device=device, generator=generator) < 0.5
    else:
        flip = torch.zeros(batch, dtype=torch.bool, device=device)
    return CropDraw(top=top, left=left, height=h, width=w, flip=flip)


def _centre_box(height: int, width: int) -> tuple[int, int]:
    """torchvision's fallback box (width, height): the whole image, cut to the nearest allowed aspect ratio."""
    in_ratio = width / height
    if in_ratio < ASPECT_RATIO[0]:
        return width, round(width / ASPECT_RATIO[0])
    if in_ratio > ASPECT_RATIO[1]:
        return round(height * ASPECT_RATIO[1]), height
    return width, height


def resized_crops(images: torch.Tensor, draw: CropDraw, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) images (C 1 or 3) -> float32 (B, 3, size, size) in [-1, 1], each cropped and resized
    (and flipped) as its draw says."""
    batch, _, height, width = images.shape
    device = images.device
    out = torch.arange(size, device=device, dtype=torch.float32) + 0.5  # output pixel centres
    # Flipping after resizing reads output column size-1-x where x would be read.
    columns = torch.where(draw.flip[:, None], size - out, out)  # (B, size)
    xs = _source_coordinates(columns, draw.left, draw.width, size)  # (B, size), pixels of the source
    ys = _source_coordinates(out.expand(batch, size), draw.top, draw.height, size)
    # grid_sample's normalized coordinates (align_corners=False): pixel p -> (2p + 1) / extent - 1.
    grid_x = (2 * xs + 1) / width - 1
    grid_y = (2 * ys + 1) / height - 1
    grid = torch.stack(
        (grid_x[:, None, :].expand(batch, size, size), grid_y[:, :, None].expand(batch, size, size)), dim=-1
    )  # (B, size, size, 2): (x, y) per output pixel
    pixels = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # As the per-image path, whose resize returns uint8: the same levels, then the same map to [-1, 1].
    pixels = pixels.round_().clamp_(0, 255).sub_(127.5).div_(127.5)
    return pixels.expand(batch, 3, size, size) if pixels.shape[1] == 1 else pixels


def _source_coordinates(
    centres: torch.Tensor, start: torch.Tensor, extent: torch.Tensor, size: int
) -> torch.Tensor:
    """Source pixel coordinates of output pixel centres, as F.interpolate(bilinear, align_corners=False) maps
    them inside a crop [start, start + extent): half-pixel scaling, clamped to the crop's first and last pixel."""
    scale = extent[:, None].float() / size
    inside = (centres * scale - 0.5).clamp(min=0.0)
    inside = torch.minimum(inside, extent[:, None].float() - 1)
    return start[:, None].float() + inside
