"""The embedded datasets (synthetic, digits): generated or loaded once, resized once, held as one uint8 tensor.

Holding images already at the model's size means a tiny training run spends its time in the model, not in
PIL: evaluation reads a tensor slice, training runs a tensor crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vit.data.errors import DataError
from vit.data.transforms import Transform, normalize_uint8

# Above this a synthetic dataset would be better generated lazily; far more than a test or demo needs.
MAX_SYNTHETIC_BYTES = 4 << 30
# Side of each class's random colour grid: coarse enough that random crops keep most of its layout.
PROTOTYPE_GRID = 4
# Pixel noise relative to the class pattern's own spread: images of one class differ visibly, and a linear
# model on raw pixels is far from perfect, yet a small ViT learns the classes in a few hundred steps.
NOISE_STD = 1.0


class TensorImages(Dataset[tuple[torch.Tensor, int]]):
    """Images in a (N, C, S, S) uint8 tensor (C = 1 or 3; grey is repeated to 3 channels) with int64 labels.

    transform None: the image as stored, scaled to [-1, 1]; otherwise transform(uint8 (3, S, S) tensor).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform | None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].expand(3, -1, -1)
        pixels = normalize_uint8(image) if self.transform is None else self.transform(image)
        return pixels, int(self.labels[index])

    def select(self, indices: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.labels[indices], self.transform)

    def with_transform(self, transform: Transform | None) -> TensorImages:
        return TensorImages(self.images, self.labels, transform)


def _to_uint8(unit: torch.Tensor) -> torch.Tensor:
    return unit.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def synthetic_images(size: int, num_classes: int, image_size: int, seed: int) -> TensorImages:
    """A learnable toy problem, the same for the same arguments: each class is a random low-resolution colour
    layout (a PROTOTYPE_GRID² RGB grid, smoothly upsampled); an image is its class's layout at a random contrast
    plus Gaussian pixel noise. Labels are balanced (image i has class i mod num_classes)."""
    if size < 2 * num_classes:
        raise DataError(
            f"data.synthetic_size {size} is too small for {num_classes} classes: each class needs at least two "
            "images (one to train on, one to validate)"
        )
    needed = size * 3 * image_size * image_size
    if needed > MAX_SYNTHETIC_BYTES:
        raise DataError(
            f"a synthetic dataset of {size} images at {image_size} px needs {needed / 2**30:.1f} GiB; "
            "lower data.synthetic_size or model.image_size"
        )
    generator = torch.Generator().manual_seed(seed)
    grids = torch.randn(num_classes, 3, PROTOTYPE_GRID, PROTOTYPE_GRID, generator=generator)
    prototypes = F.interpolate(grids, size=(image_size, image_size), mode="bicubic", align_corners=False)
    labels = torch.arange(size) % num_classes
    images = torch.empty(size, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, size, 1024):  # in chunks: the float intermediate is 4x the uint8 result
        chunk = labels[start : start + 1024]
        contrast = 0.5 + torch.rand(len(chunk), 1, 1, 1, generator=generator)
        noise = NOISE_STD * torch.randn(len(chunk), 3, image_size, image_size, generator=generator)
        # Pattern and noise have unit spread; /6 maps about ±3 standard deviations onto the pixel range.
        images[start : start + len(chunk)] = _to_uint8(0.5 + (contrast * prototypes[chunk] + noise) / 6.0)
    return TensorImages(images, labels, transform=None)


def digits_images(image_size: int) -> tuple[TensorImages, list[str]]:
    """scikit-learn's bundled handwritten digits (1797 grey 8x8 images, values 0..16), bilinearly resized to
    image_size once, stored with one channel (repeated to three when read)."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    digits = load_digits()
    unit = torch.from_numpy(digits.images).to(torch.float32).div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    resized = F.interpolate(unit, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    return TensorImages(_to_uint8(resized), labels, transform=None), [str(d) for d in range(10)]
