"""Datasets and loaders for the trainer: `build_datasets(spec.data, image_size=..., seed=...)`.

Every dataset returned yields (float32 (3, S, S) image in [-1, 1], int label) and has a `labels` int64 tensor.
Sources: synthetic and digits are built in memory (no files, no network); cifar10, cifar100, pets and
flowers102 come through torchvision from data.root (their own test split serves as validation); imagefolder
reads root/train/<class>/ and root/val/<class>/, or root/<class>/ with a held-out share; shards reads what
`vitq data pack` wrote (vit.data.shards), from a directory or an http(s) URL, its val split or a held-out share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vit.config import AUGMENT_PRESETS, AugmentSpec, DataSpec
from vit.data.errors import DataError
from vit.data.files import ImageFiles, Selection, existing_root, folder_with_split, torchvision_splits
from vit.data.loader import ShardedSampler, build_loader, set_epoch
from vit.data.memory import TensorImages, digits_images, synthetic_images
from vit.data.shards import TarShards, open_packed, whole
from vit.data.splits import stratified_split, subset_indices
from vit.data.transforms import (
    DIGITS,
    MEAN,
    PHOTO,
    SMALL_PHOTO,
    STD,
    SYNTHETIC,
    eval_transform,
    train_transform,
)
from vit.data_roots import check_confined

__all__ = [
    "MEAN",
    "STD",
    "DataError",
    "Datasets",
    "ImageDataset",
    "ShardedSampler",
    "build_datasets",
    "build_loader",
    "set_epoch",
]

# What `data.augment: true` means for each dataset.
DEFAULT_AUGMENTATIONS: dict[str, AugmentSpec] = {
    "synthetic": SYNTHETIC,
    "digits": DIGITS,
    "cifar10": SMALL_PHOTO,
    "cifar100": SMALL_PHOTO,
    "pets": PHOTO,
    "flowers102": PHOTO,
    "imagefolder": PHOTO,
    "shards": PHOTO,
}


def training_augmentation(data: DataSpec) -> AugmentSpec | None:
    """The augmentation `data.augment` asks for (None: the images as they are)."""
    if isinstance(data.augment, AugmentSpec):
        return data.augment
    if isinstance(data.augment, str):
        return None if data.augment == "none" else AUGMENT_PRESETS[data.augment]
    return DEFAULT_AUGMENTATIONS[data.dataset] if data.augment else None


# Every kind is a torch Dataset of (image, label) with len() and a `labels` tensor.
ImageDataset = TensorImages | ImageFiles | Selection | TarShards


@dataclass(frozen=True)
class Datasets:
    train: ImageDataset
    val: ImageDataset
    num_classes: int
    class_names: list[str]


def build_datasets(data: DataSpec, *, image_size: int, seed: int) -> Datasets:
    """The training and validation datasets the spec names; DataError if they cannot be built.

    Held-out splits (datasets without one) and `data.subset` (applied to the training split only) are
    class-stratified and fixed by `seed`, so every rank and every resumed run sees the same images.
    """
    augmentation = training_augmentation(data)
    train_tf = train_transform(image_size, augmentation, data.rand_augment)
    eval_tf = eval_transform(image_size)
    train: ImageDataset
    val: ImageDataset
    if data.dataset in ("synthetic", "digits"):
        if data.dataset == "synthetic":
            source = synthetic_images(data.synthetic_size, data.synthetic_classes, image_size, seed)
            class_names = [f"class_{i}" for i in range(data.synthetic_classes)]
        else:
            source, class_names = digits_images(image_size)
        train_idx, val_idx = stratified_split(source.labels, data.val_fraction, seed)
        # Stored at image_size already: evaluation needs no resize, training crops the stored tensor.
        augmented = augmentation is not None or data.rand_augment is not None
        train = source.select(train_idx).with_transform(train_tf if augmented else None)
        val = source.select(val_idx)
    elif data.dataset == "imagefolder":
        assert data.root is not None  # DataSpec requires it for file datasets
        root = existing_root(data.root)
        train_files, val_files, class_names = folder_with_split(root)
        train = ImageFiles(train_files.paths, train_files.labels, train_tf)
        if val_files is None:
            train_idx, val_idx = stratified_split(train_files.labels, data.val_fraction, seed)
            train, val = train.select(train_idx), train.select(val_idx).with_transform(eval_tf)
        else:
            val = ImageFiles(val_files.paths, val_files.labels, eval_tf)
    elif data.dataset == "shards":
        assert data.root is not None
        packed = open_packed(data.root)
        class_names = packed.class_names
        train = whole(packed.train, train_tf)
        if packed.val is None:
            train_idx, val_idx = stratified_split(train.labels, data.val_fraction, seed)
            train, val = train.select(train_idx), train.select(val_idx).with_transform(eval_tf)
        else:
            val = whole(packed.val, eval_tf)
    else:
        assert data.root is not None
        root = existing_root(data.root) if not data.download else _created(data.root)
        check_confined(root)  # before torchvision reads a file (CIFAR's loads its arrays when built)
        train, val, class_names = torchvision_splits(data.dataset, root, data.download, train_tf, eval_tf)
        if data.download:
            check_confined(root)  # and what the download unpacked
    if data.subset is not None:
        train = train.select(subset_indices(train.labels, data.subset, seed))
    return Datasets(train=train, val=val, num_classes=len(class_names), class_names=class_names)


def _created(root: str) -> Path:
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
