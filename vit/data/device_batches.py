"""Training batches of an in-memory dataset, put together and augmented on the training device.

The uint8 images move to the device once (a synthetic B/16 set of 2,048 images at 224 px is 308 MB); each batch is
an index into them and one `resized_crops` call, so no loader worker and no host-to-device copy is on the step's
path. Order and resume are the loader's (vit.data.loader): the same ShardedSampler, so `set_epoch(batches, epoch,
skip_batches=k)` and `len()` mean what they mean for a DataLoader. The crops are drawn from the device's default
generator, which the trainer's checkpoints capture: a resumed run draws the crops it would have drawn.

Datasets that read files keep the DataLoader and its CPU workers (decoding is CPU work), and so does any dataset
with `data.rand_augment`: timm's RandAugment works on PIL images, one at a time (mixup, CutMix and random erasing
run on the device in either case: vit.regularize).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets

from vit.config import AugmentSpec
from vit.data.batch_augment import CropDraw, draw_crops, resized_crops
from vit.data.device_decode import DeviceDecodedBatches, EncodedImages, collate_encoded
from vit.data.errors import DataError
from vit.data.files import ImageFiles, Selection
from vit.data.loader import ShardedSampler, build_loader
from vit.data.memory import TensorImages
from vit.data.shards import TarShards

Batch = tuple[torch.Tensor, torch.Tensor]


class DeviceBatches:
    """Iterates (float32 (B, 3, S, S) images in [-1, 1], int64 (B,) labels) on `device`; full batches only."""

    def __init__(
        self,
        dataset: TensorImages,
        *,
        batch_size: int,
        image_size: int,
        augmentation: AugmentSpec | None,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.sampler = ShardedSampler(
            len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size, even=True
        )
        if len(self.sampler) < batch_size:
            raise DataError(
                f"the dataset's {len(dataset)} images give rank {rank} of {world_size} only {len(self.sampler)}, "
                f"less than one batch of {batch_size}: lower the batch size or use more data"
            )
        self.batch_size = batch_size
        self.image_size = image_size
        self.augmentation = augmentation
        self.images = dataset.images.to(device)  # uint8 (N, C, H, W)
        self.labels = dataset.labels.to(device)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        if self.images.is_cuda:  # pinned, the copy does not wait for the GPU to finish the previous epoch
            order = order.pin_memory().to(self.images.device, non_blocking=True)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._augmented(self.images[index]), self.labels[index]

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        if self.augmentation is None:
            if height == width == self.image_size:  # stored at the model's size: nothing to resample
                return images.float().sub_(127.5).div_(127.5).expand(batch, 3, height, width)
            draw = CropDraw.whole(batch, height, width, images.device)
        else:
            draw = draw_crops(batch, height, width, self.augmentation, device=images.device)
        return resized_crops(images, draw, self.image_size)


def decode_on_device(dataset: object, decode: str, device: torch.device, per_image: bool) -> bool:
    """Whether `data.decode` puts decoding on the training device for this dataset (vit.config.DataSpec.decode)."""
    if per_image or not isinstance(dataset, ImageFiles | TarShards):
        return False
    return decode == "device" or (decode == "auto" and device.type == "cuda")


def in_memory(dataset: Dataset[tuple[torch.Tensor, int]], image_size: int) -> TensorImages | None:
    """The dataset as one uint8 tensor when it is held in memory already: the embedded datasets, and CIFAR
    (torchvision keeps its pixels in one array) when the model's size does not shrink it (shrinking wants the
    per-image path's antialiasing). None: read it with loader workers."""
    if isinstance(dataset, TensorImages):
        return dataset
    if isinstance(dataset, Selection) and isinstance(dataset.base, tv_datasets.CIFAR10):  # CIFAR100 too
        pixels = torch.from_numpy(dataset.base.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        if pixels.shape[-1] > image_size:
            return None
        return TensorImages(pixels[dataset.indices].contiguous(), dataset.labels, transform=None)
    return None


def build_train_batches(
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int,
    image_size: int,
    augmentation: AugmentSpec | None,
    seed: int,
    num_workers: int | None,
    rank: int,
    world_size: int,
    device: torch.device,
    per_image: bool = False,
    decode: str = "loader",
) -> DeviceBatches | DeviceDecodedBatches | DataLoader[tuple[torch.Tensor, int]]:
    """DeviceBatches for an in-memory dataset; for image files with decode "device" (or "auto" on CUDA), their
    bytes read by CPU workers and decoded on the device (vit.data.device_decode); else (or with per_image: the
    dataset's own per-image transform is wanted) a DataLoader over CPU workers (module docstring)."""
    if decode_on_device(dataset, decode, device, per_image):
        assert isinstance(dataset, ImageFiles | TarShards)
        loader = build_loader(
            EncodedImages(dataset),
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            num_workers=num_workers,
            drop_last=True,
            rank=rank,
            world_size=world_size,
            collate_fn=collate_encoded,
        )
        return DeviceDecodedBatches(
            loader, image_size=image_size, augmentation=augmentation, seed=seed, rank=rank, device=device
        )
    images = None if per_image else in_memory(dataset, image_size)
    if images is not None:
        return DeviceBatches(
            images,
            batch_size=batch_size,
            image_size=image_size,
            augmentation=augmentation,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
        )
    return build_loader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        num_workers=num_workers,
        drop_last=True,
        rank=rank,
        world_size=world_size,
    )
