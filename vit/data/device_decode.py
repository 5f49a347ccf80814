"""Training batches decoded on the training device (`data.decode: device`): loader workers only read each image's
encoded bytes; the training process decodes a whole batch of JPEGs at once with
`torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on a GPU), then crops, resizes, flips and normalises each
image there, so a fast GPU is not held back by the CPU cores of its node. On a CPU device the same code runs with
torchvision's CPU decoder (how the tests run it). Images that are not JPEG (PNG, ...) are decoded on the CPU by
torchvision and moved over.

The augmentation is the per-image path's (vit.data.transforms: torchvision's RandomResizedCrop and flip, or the
evaluation resize without augmentation), the same torchvision functions on the decoded tensors; only the crop
boxes are drawn here, by vit.data.batch_augment.draw_crops, from a generator seeded by (seed, rank, epoch, batch):
a resumed run draws the crops it would have drawn. Order, epochs and resume are the loader's (vit.data.loader).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from vit.config import AugmentSpec
from vit.data.batch_augment import draw_crops
from vit.data.errors import DataError
from vit.data.files import ImageFiles
from vit.data.shards import TarShards

Encoded = tuple[
    torch.Tensor, int, str
]  # an image's encoded bytes (uint8, 1-D), its label, where it came from
EncodedBatch = tuple[list[torch.Tensor], torch.Tensor, list[str]]
JPEG_MAGIC = (0xFF, 0xD8)


class EncodedImages(Dataset[Encoded]):
    """A folder's or shards' images as their bytes, undecoded (what the loader workers return)."""

    def __init__(self, source: ImageFiles | TarShards) -> None:
        self.source = source
        self.labels = source.labels

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shard_of(self) -> torch.Tensor | None:
        """As TarShards.shard_of: the sampler reads a few shards at a time."""
        return self.source.shard_of if isinstance(self.source, TarShards) else None

    def __getitem__(self, index: int) -> Encoded:
        data, where = self.source.encoded(index)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(self.labels[index]), where


def collate_encoded(items: list[Encoded]) -> EncodedBatch:
    data, labels, where = zip(*items, strict=True)
    return list(data), torch.tensor(labels, dtype=torch.int64), list(where)


def decode_batch(data: list[torch.Tensor], where: list[str], device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, H, W) RGB images on `device`: the JPEGs decoded there in one batched call, the others on the CPU."""
    jpeg = [i for i, d in enumerate(data) if len(d) > 2 and (int(d[0]), int(d[1])) == JPEG_MAGIC]
    images: list[torch.Tensor | None] = [None] * len(data)
    if jpeg:
        try:
            decoded = decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad image fails the batch: find and name it
            decoded = [_decode_one(data[i], where[i], device) for i in jpeg]
        for i, image in zip(jpeg, decoded, strict=True):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:
            images[i] = _decode_one(data[i], where[i], device)
    return [image for image in images if image is not None]


def _decode_one(data: torch.Tensor, where: str, device: torch.device) -> torch.Tensor:
    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as err:
        raise DataError(f"cannot decode image {where}: {err}") from err


def place(
    images: list[torch.Tensor], size: int, augmentation: AugmentSpec | None, generator: torch.Generator
) -> torch.Tensor:
    """Decoded uint8 images -> float32 (B, 3, size, size) in [-1, 1], as vit.data.transforms.train_transform
    places them: a random resized crop (+ flip) drawn from `generator`, or without augmentation the shorter side
    resized to `size` and the centre cropped."""
    out = []
    for image in images:
        height, width = image.shape[-2:]
        if augmentation is None:
            image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
        else:
            box = draw_crops(1, height, width, augmentation, device=torch.device("cpu"), generator=generator)
            top, left, h, w = (int(v) for v in (box.top, box.left, box.height, box.width))
            image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            if bool(box.flip):
                image = TF.horizontal_flip(image)
        out.append(image)
    return torch.stack(out).to(torch.float32).sub_(127.5).div_(127.5)


class DeviceDecodedBatches:
    """Iterates (float32 (B, 3, S, S) images in [-1, 1], int64 (B,) labels) on `device`, from a loader of
    EncodedImages; `sampler` and `batch_size` are the loader's, so vit.data.loader.set_epoch works on it."""

    def __init__(
        self,
        loader: DataLoader[Encoded],
        *,
        image_size: int,
        augmentation: AugmentSpec | None,
        seed: int,
        rank: int,
        device: torch.device,
    ) -> None:
        self.loader = loader
        self.image_size = image_size
        self.augmentation = augmentation
        self.seed = seed
        self.rank = rank
        self.device = device

    @property
    def sampler(self) -> object:
        return self.loader.sampler

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self.loader.sampler
        epoch, first = getattr(sampler, "epoch", 0), getattr(sampler, "skip", 0) // (self.batch_size or 1)
        batches: Iterator[EncodedBatch] = iter(self.loader)
        for number, (data, labels, where) in enumerate(batches, start=first):
            # A tuple of ints hashes the same in every process (no PYTHONHASHSEED salt).
            generator = torch.Generator().manual_seed(
                hash((self.seed, self.rank, epoch, number)) & (2**63 - 1)
            )
            images = decode_batch(data, where, self.device)
            yield place(images, self.image_size, self.augmentation, generator), labels.to(self.device)
