"""Device-side batches of in-memory datasets: the loader's order and resume position, the same pixels without
augmentation, and crops drawn from the generator that checkpoints capture."""

from __future__ import annotations

import torch

from vit.config import AugmentSpec, DataSpec
from vit.data import build_datasets, build_loader, set_epoch
from vit.data.device_batches import DeviceBatches, build_train_batches
from vit.data.memory import TensorImages

CPU = torch.device("cpu")


def synthetic_train(augment: bool) -> TensorImages:
    data = DataSpec(dataset="synthetic", synthetic_size=96, synthetic_classes=4, augment=augment)
    train = build_datasets(data, image_size=16, seed=0).train
    assert isinstance(train, TensorImages)
    return train


def device_batches(train: TensorImages, augmentation: AugmentSpec | None, rank: int = 0) -> DeviceBatches:
    return DeviceBatches(
        train,
        batch_size=8,
        image_size=16,
        augmentation=augmentation,
        seed=3,
        rank=rank,
        world_size=2,
        device=CPU,
    )


def test_without_augmentation_they_are_the_loaders_batches_from_the_same_position() -> None:
    train = synthetic_train(augment=False)
    for rank in (0, 1):
        batches = device_batches(train, None, rank)
        loader = build_loader(
            train, batch_size=8, shuffle=True, seed=3, drop_last=True, rank=rank, world_size=2
        )
        assert len(batches) == len(loader) == len(train) // 2 // 8 == 5
        for loaded in (batches, loader):
            set_epoch(loaded, 2, skip_batches=2)
        assert len(batches) == len(loader) == 3
        pairs = list(zip(batches, loader, strict=True))
        for (images, labels), (expected_images, expected_labels) in pairs:
            torch.testing.assert_close(images, expected_images, rtol=0, atol=0)
            assert torch.equal(labels, expected_labels)


def test_augmented_crops_come_from_the_default_generator() -> None:
    train = synthetic_train(augment=True)
    batches = device_batches(train, AugmentSpec(crop_scale=(0.5, 1.0), flip=True))

    def epoch_images() -> torch.Tensor:
        set_epoch(batches, 0)
        return torch.cat([images for images, _ in batches])

    torch.manual_seed(7)
    first = epoch_images()
    assert first.shape == (40, 3, 16, 16) and float(first.min()) >= -1.0 and float(first.max()) <= 1.0
    again = epoch_images()
    torch.manual_seed(7)
    replayed = epoch_images()
    assert not torch.equal(first, again)  # new crops each pass
    torch.testing.assert_close(replayed, first, rtol=0, atol=0)  # the same generator state, the same crops


def test_file_datasets_keep_the_dataloader() -> None:
    train = synthetic_train(augment=False)
    files_like = torch.utils.data.Subset(train, list(range(32)))  # not held as one tensor
    loader = build_train_batches(
        files_like,
        batch_size=8,
        image_size=16,
        augmentation=None,
        seed=0,
        num_workers=0,
        rank=0,
        world_size=1,
        device=CPU,
    )
    assert isinstance(loader, torch.utils.data.DataLoader)
    on_device = build_train_batches(
        train,
        batch_size=8,
        image_size=16,
        augmentation=None,
        seed=0,
        num_workers=None,
        rank=0,
        world_size=1,
        device=CPU,
    )
    assert isinstance(on_device, DeviceBatches)
