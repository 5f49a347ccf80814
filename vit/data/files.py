"""Datasets read from files under data.root: image folders and torchvision's CIFAR, Pets and Flowers.

Problems are found as early as they can be: the folder layout and every file's presence and size when the
dataset is built, an undecodable image when it is read (naming the file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets as tv_datasets

from vit.data.errors import DataError
from vit.data.transforms import Transform
from vit.data_roots import check_link, check_root

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB, or raise DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Image files with integer labels, decoded on read."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, transform: Transform) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), int(self.labels[index])

    def encoded(self, index: int) -> tuple[bytes, str]:
        """The image file's bytes as stored, and its path for messages (decoding on the device)."""
        path = self.paths[index]
        try:
            return path.read_bytes(), str(path)
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from err

    def select(self, indices: torch.Tensor) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices.tolist()], self.labels[indices], self.transform)

    def with_transform(self, transform: Transform) -> ImageFiles:
        return ImageFiles(self.paths, self.labels, transform)


@dataclass(frozen=True)
class FileList:
    paths: list[Path]
    labels: torch.Tensor


def existing_root(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data.root {path} is not a directory")
    return path


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class subfolders of folder; DataError if there are none."""
    if not any(folder.iterdir()):
        raise DataError(f"folder {folder} is empty: expected one subfolder of images per class")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"folder {folder} has no class subfolders: expected {folder}/<class name>/<images>")
    return names


def list_images(folder: Path, class_names: list[str], roots: list[Path] | None = None) -> FileList:
    """Every image file of each class folder, checked to exist and be non-empty (decoding is checked on read) and,
    with `roots`, to resolve inside them: a link is checked as the listing meets it (vit.data_roots), so the
    confinement costs no second walk over the files."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        class_dir = _confined(folder / name, roots)
        with os.scandir(class_dir) as entries:  # an entry knows whether it is a link without another call
            files = sorted(
                (entry for entry in entries if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES),
                key=lambda entry: entry.name,
            )
        if not files:
            raise DataError(
                f"class folder {class_dir} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        for entry in files:
            if entry.is_symlink():
                check_link(Path(entry.path), roots)
            if not entry.is_file() or entry.stat().st_size == 0:
                raise DataError(f"image file {entry.path} is empty or not a regular file")
        paths.extend(Path(entry.path) for entry in files)
        labels.extend([label] * len(files))
    return FileList(paths, torch.tensor(labels, dtype=torch.int64))


def folder_with_split(root: Path) -> tuple[FileList, FileList | None, list[str]]:
    """root/train/<class>/ (+ root/val/<class>/ when present) or root/<class>/ alone; val None: no split given.
    Every folder and image listed resolves inside the allowed data roots (vit.data_roots), or DataError."""
    roots = check_root(root)
    train_dir, val_dir = _confined(root / "train", roots), _confined(root / "val", roots)
    if not train_dir.is_dir():
        names = class_folders(root)
        return list_images(root, names, roots), None, names
    names = class_folders(train_dir)
    if not val_dir.is_dir():
        return list_images(train_dir, names, roots), None, names
    unknown = sorted(set(class_folders(val_dir)) - set(names))
    if unknown:
        raise DataError(f"{val_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
    val_names = [n for n in names if (val_dir / n).is_dir()]
    val = list_images(val_dir, val_names, roots)
    # Labels follow the training folder's class order, whichever classes val has.
    remap = torch.tensor([names.index(n) for n in val_names], dtype=torch.int64)
    return list_images(train_dir, names, roots), FileList(val.paths, remap[val.labels]), names


def _confined(path: Path, roots: list[Path] | None) -> Path:
    if roots is not None and path.is_symlink():
        check_link(path, roots)
    return path


class Selection(Dataset[tuple[torch.Tensor, int]]):
    """Some items of a torchvision dataset (its transform applied), with their labels known without decoding."""

    def __init__(
        self, base: Dataset[tuple[torch.Tensor, int]], labels: torch.Tensor, indices: torch.Tensor
    ) -> None:
        self.base = base
        self.indices = indices
        self.labels = labels[indices]
        self._base_labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = int(self.indices[index])
        try:
            image, _ = self.base[item]
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"cannot read item {item} of {self.base.__class__.__name__}: {err}") from err
        return image, int(self.labels[index])

    def select(self, indices: torch.Tensor) -> Selection:
        return Selection(self.base, self._base_labels, self.indices[indices])


# dataset name -> (torchvision class, its folder under root, training split(s), test split). Flowers-102 trains
# on its train and val splits together (10 + 10 images per class), as BiT and ViT did; the test splits serve as
# validation.
TORCHVISION: dict[str, tuple[type[Dataset[tuple[torch.Tensor, int]]], str, tuple[str, ...], str]] = {
    "cifar10": (tv_datasets.CIFAR10, "cifar-10-batches-py", ("train",), "test"),
    "cifar100": (tv_datasets.CIFAR100, "cifar-100-python", ("train",), "test"),
    "pets": (tv_datasets.OxfordIIITPet, "oxford-iiit-pet", ("trainval",), "test"),
    "flowers102": (tv_datasets.Flowers102, "flowers-102", ("train", "val"), "test"),
}


def open_torchvision(
    name: str, root: Path, split: str, download: bool, transform: Transform | None
) -> Dataset[tuple[torch.Tensor, int]]:
    cls, folder, _, _ = TORCHVISION[name]
    try:
        if name in ("cifar10", "cifar100"):
            return cls(str(root), train=split == "train", transform=transform, download=download)  # type: ignore[call-arg]
        return cls(str(root), split=split, transform=transform, download=download)  # type: ignore[call-arg]
    except (
        RuntimeError,
        OSError,
    ) as err:  # torchvision's "Dataset not found or corrupted", a missing list file
        hint = "" if download else "set data.download: true or "
        raise DataError(
            f"{name} not found or incomplete in {root}: {hint}put its files in {root / folder} ({err})"
        ) from err


def labels_of(dataset: Dataset[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Labels of a torchvision dataset without decoding its images (Pets and Flowers keep them privately)."""
    raw = getattr(dataset, "targets", None)
    if raw is None:
        raw = getattr(dataset, "_labels")  # noqa: B009
    return torch.as_tensor(raw, dtype=torch.int64)


def torchvision_splits(
    name: str, root: Path, download: bool, train_transform: Transform, eval_transform: Transform
) -> tuple[Selection, Selection, list[str]]:
    """(train, test, class names) of a torchvision dataset, every image of each split selected."""
    _, _, train_splits, test_split = TORCHVISION[name]
    parts = [open_torchvision(name, root, split, download, train_transform) for split in train_splits]
    test = open_torchvision(
        name, root, test_split, False, eval_transform
    )  # downloading the train split fetched it
    labels = torch.cat([labels_of(part) for part in parts])
    train = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    num_classes = int(labels.max()) + 1
    classes = list(getattr(parts[0], "classes", None) or [str(i) for i in range(num_classes)])
    test_labels = labels_of(test)
    return (
        Selection(train, labels, torch.arange(len(labels))),
        Selection(test, test_labels, torch.arange(len(test_labels))),
        classes,
    )
