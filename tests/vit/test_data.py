"""vit.data: every dataset kind buildable offline, deterministic splits and subsets, transforms, sharded
loaders that resume mid-epoch, and DataError messages that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vit.config import AUGMENT_PRESETS, AugmentSpec, DataSpec
from vit.data import (
    DataError,
    Datasets,
    ShardedSampler,
    build_datasets,
    build_loader,
    set_epoch,
    training_augmentation,
)
from vit.data.files import ImageFiles
from vit.data.splits import stratified_split, subset_indices


def _build(image_size: int = 16, seed: int = 0, **fields: object) -> Datasets:
    return build_datasets(DataSpec.model_validate(fields), image_size=image_size, seed=seed)


def _stack(dataset: torch.utils.data.Dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def _class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


# --- embedded datasets ---------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_in_range() -> None:
    a = _build(dataset="synthetic", synthetic_size=200, synthetic_classes=4, augment=False)
    b = _build(dataset="synthetic", synthetic_size=200, synthetic_classes=4, augment=False)
    other = _build(dataset="synthetic", synthetic_size=200, synthetic_classes=4, augment=False, seed=1)
    assert (a.num_classes, len(a.train) + len(a.val)) == (4, 200)
    assert a.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert torch.equal(_stack(a.train, 20), _stack(b.train, 20))
    assert not torch.equal(_stack(a.train, 20), _stack(other.train, 20))
    images = _stack(a.val, len(a.val))
    assert images.shape == (len(a.val), 3, 16, 16)
    assert images.dtype == torch.float32 and images.min() >= -1.0 and images.max() <= 1.0
    assert _class_counts(a.val.labels, 4) == [5, 5, 5, 5]  # 10% of each class's 50


def test_synthetic_needs_two_images_per_class() -> None:
    with pytest.raises(DataError, match="synthetic_size 30 is too small for 20 classes"):
        _build(dataset="synthetic", synthetic_size=30, synthetic_classes=20)


def test_synthetic_classes_are_learnable_from_pixels() -> None:
    data = _build(dataset="synthetic", synthetic_size=400, synthetic_classes=8, augment=False)
    train = torch.stack([data.train[i][0] for i in range(len(data.train))]).flatten(1)
    val = torch.stack([data.val[i][0] for i in range(len(data.val))]).flatten(1)
    means = torch.stack([train[data.train.labels == c].mean(0) for c in range(8)])
    predicted = torch.cdist(val, means).argmin(1)
    assert (predicted == data.val.labels).float().mean() >= 0.9  # nearest class mean: signal beats noise


def test_digits_resized_split_and_augmented() -> None:
    data = _build(dataset="digits", image_size=32)
    assert data.num_classes == 10 and data.class_names[3] == "3"
    assert len(data.train) + len(data.val) == 1797
    assert set(data.val.labels.tolist()) == set(range(10))
    assert not set(data.train.labels.tolist()) - set(range(10))
    image, label = data.val[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey in three channels
    assert image.min() == -1.0  # background is 0 -> -1
    augmented = _stack(data.train, 8)
    assert augmented.shape == (8, 3, 32, 32) and augmented.min() >= -1.0 and augmented.max() <= 1.0


def test_augment_false_gives_the_stored_images() -> None:
    plain = _build(dataset="digits", augment=False)
    assert torch.equal(plain.train[5][0], plain.train[5][0])
    augmented = _build(dataset="digits", augment=True)
    torch.manual_seed(0)
    draws = [augmented.train[5][0] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_augment_presets_and_explicit_values() -> None:
    def chosen(**fields: object) -> AugmentSpec | None:
        return training_augmentation(DataSpec.model_validate(fields))

    # true keeps each dataset's default: photo crops and flips for a user's folder, none of that for digits.
    assert chosen(dataset="imagefolder", root="x") == AUGMENT_PRESETS["photo"]
    assert chosen(dataset="digits") == AUGMENT_PRESETS["symbol"]
    assert chosen(dataset="imagefolder", root="x", augment="light") == AugmentSpec(
        crop_scale=(0.5, 1), flip=True
    )
    assert chosen(dataset="imagefolder", root="x", augment="none") is None
    assert chosen(dataset="digits", augment=False) is None
    explicit = {"crop_scale": [0.3, 0.9], "flip": False}
    assert chosen(dataset="imagefolder", root="x", augment=explicit) == AugmentSpec(
        crop_scale=(0.3, 0.9), flip=False
    )


def test_explicit_augment_is_what_the_images_get() -> None:
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:  # the transforms scale in another order: 1 ulp apart
        return torch.allclose(a, b, rtol=0, atol=1e-6)

    image = _build(dataset="digits", augment="none").train[5][0]
    # A crop of the whole image is the stored image; with flips on, some draws are its mirror image.
    whole = _build(dataset="digits", augment={"crop_scale": [1.0, 1.0], "flip": False})
    torch.manual_seed(0)
    assert all(same(whole.train[5][0], image) for _ in range(5))
    flipped = _build(dataset="digits", augment={"crop_scale": [1.0, 1.0], "flip": True})
    draws = [flipped.train[5][0] for _ in range(20)]
    assert any(same(d, image.flip(-1)) for d in draws) and any(same(d, image) for d in draws)
    # A deep crop changes the image.
    cropped = _build(dataset="digits", augment={"crop_scale": [0.2, 0.2], "flip": False})
    assert not same(cropped.train[5][0], image)


# --- splits and subsets --------------------------------------------------------------------------------------


def test_stratified_split_is_deterministic_disjoint_and_complete() -> None:
    labels = torch.arange(100) % 4
    train, val = stratified_split(labels, 0.2, seed=3)
    again_train, again_val = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert _class_counts(labels[val], 4) == [5, 5, 5, 5]
    assert not torch.equal(val, stratified_split(labels, 0.2, seed=4)[1])


def test_split_keeps_a_singleton_class_in_training() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    train, val = stratified_split(labels, 0.3, seed=0)
    assert 3 in train.tolist() and labels[val].tolist() == [0]


def test_subset_counts_fractions_and_nesting() -> None:
    labels = torch.cat([torch.zeros(30), torch.ones(10), torch.full((5,), 2)]).long()
    five = subset_indices(labels, 5, seed=0)
    assert _class_counts(labels[five], 3) == [5, 5, 5]
    eight = subset_indices(labels, 8, seed=0)
    assert _class_counts(labels[eight], 3) == [8, 8, 5]  # a smaller class keeps all it has
    assert set(five.tolist()) <= set(eight.tolist())  # nested: data-size studies grow one subset
    assert _class_counts(labels[subset_indices(labels, 0.1, seed=0)], 3) == [3, 1, 1]
    assert len(subset_indices(labels, 1.0, seed=0)) == 45


def test_subset_applies_to_training_split_only() -> None:
    full = _build(dataset="digits")
    small = _build(dataset="digits", subset=10)
    assert _class_counts(small.train.labels, 10) == [10] * 10
    assert torch.equal(small.val.labels, full.val.labels)
    assert set(small.train.labels.tolist()) <= set(full.train.labels.tolist())


# --- image folders ---------------------------------------------------------------------------------------------


def _write_images(folder: Path, counts: dict[str, int], size: tuple[int, int] = (20, 12)) -> None:
    for cls_index, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            colour = (40 * cls_index, 10 * i, 200)
            Image.new("RGB", size, colour).save(folder / name / f"img{i}.png")


def test_imagefolder_with_train_and_val_folders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"cat": 4, "dog": 3})
    _write_images(tmp_path / "val", {"dog": 2})
    data = _build(dataset="imagefolder", root=str(tmp_path), image_size=16)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert (len(data.train), len(data.val)) == (7, 2)
    assert data.val.labels.tolist() == [1, 1]  # labels follow the training folder's class order
    image, label = data.val[0]
    assert image.shape == (3, 16, 16) and label == 1
    assert torch.allclose(image[2], torch.full((16, 16), 200 / 127.5 - 1), atol=1e-5)
    assert data.train[0][0].shape == (3, 16, 16)


def test_imagefolder_without_val_is_split_by_fraction(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a": 10, "b": 10, "c": 10})
    data = _build(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2)
    assert (len(data.train), len(data.val)) == (24, 6)
    assert _class_counts(data.val.labels, 3) == [2, 2, 2]
    again = _build(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2)
    assert isinstance(data.val, ImageFiles) and isinstance(again.val, ImageFiles)
    assert again.val.paths == data.val.paths


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no_classes", "has no class subfolders"),
        ("class_without_images", "has no image files"),
        ("zero_bytes", "img1.png is empty"),
    ],
)
def test_imagefolder_errors_name_the_problem(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "no_classes":
        (root / "loose.jpg").write_bytes(b"x")
    if layout == "class_without_images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("no images")
    if layout == "zero_bytes":
        _write_images(root, {"cat": 1})
        (root / "cat" / "img1.png").touch()
    with pytest.raises(DataError, match=message) as caught:
        _build(dataset="imagefolder", root=str(root))
    assert str(root) in str(caught.value)


def test_corrupt_image_is_named_when_read(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"cat": 2})
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    data = _build(dataset="imagefolder", root=str(tmp_path), augment=False)
    assert isinstance(data.train, ImageFiles)
    broken = [i for i, p in enumerate(data.train.paths) if p.name == "broken.jpg"]
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        _ = [data.train[i] for i in broken]


# --- torchvision datasets --------------------------------------------------------------------------------------


def _write_fake_pets(root: Path) -> None:
    """The on-disk layout torchvision's OxfordIIITPet reads: images/<id>.jpg, annotations/{trainval,test}.txt."""
    images, annotations = root / "oxford-iiit-pet" / "images", root / "oxford-iiit-pet" / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir()
    breeds = [("Abyssinian", 1, 1), ("beagle", 2, 2), ("Bengal", 3, 1)]
    for split, ids in (("trainval", range(1, 5)), ("test", range(5, 7))):
        lines = []
        for breed, label, species in breeds:
            for i in ids:
                Image.new("RGB", (30, 20), (label * 60, i * 20, 90)).save(images / f"{breed}_{i}.jpg")
                lines.append(f"{breed}_{i} {label} {species} 1")
        (annotations / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_pets_from_a_local_copy(tmp_path: Path) -> None:
    _write_fake_pets(tmp_path)
    data = _build(dataset="pets", root=str(tmp_path), subset=2)
    assert data.class_names == ["Abyssinian", "Beagle", "Bengal"] and data.num_classes == 3
    assert _class_counts(data.train.labels, 3) == [2, 2, 2]
    assert (len(data.val), _class_counts(data.val.labels, 3)) == (6, [2, 2, 2])
    image, label = data.val[0]
    assert image.shape == (3, 16, 16) and label == 0
    assert data.train[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "flowers102", "pets"])
def test_torchvision_dataset_missing_files_says_how_to_fix(tmp_path: Path, dataset: str) -> None:
    # CIFAR and Flowers check their files' md5 sums, so a fake local copy of them cannot pass: only this path
    # (files absent, download off) is testable offline.
    with pytest.raises(DataError, match=r"set data.download: true or put its files in") as caught:
        _build(dataset=dataset, root=str(tmp_path))
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(DataError, match="does not exist"):
        _build(dataset=dataset, root=str(tmp_path / "nowhere"))


# --- loaders -------------------------------------------------------------------------------------------------


def test_sharded_sampler_partitions_across_two_ranks() -> None:
    shares = [
        list(ShardedSampler(11, shuffle=True, seed=5, rank=r, world_size=2, even=False)) for r in range(2)
    ]
    assert sorted(shares[0] + shares[1]) == list(range(11))  # evaluation: each item once, no padding
    even = [list(ShardedSampler(11, shuffle=True, seed=5, rank=r, world_size=2, even=True)) for r in range(2)]
    assert len(even[0]) == len(even[1]) == 5 and not set(even[0]) & set(even[1])


def test_epoch_order_is_seeded_and_resumes_mid_epoch() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(40), torch.zeros(40, dtype=torch.long))
    loader = build_loader(dataset, batch_size=4, shuffle=True, seed=1, drop_last=True, rank=1, world_size=2)
    set_epoch(loader, 3)
    full = [batch[0].tolist() for batch in loader]
    assert len(full) == 5 and [i for batch in full for i in batch] != sorted(
        i for batch in full for i in batch
    )  # shuffled
    set_epoch(loader, 3, skip_batches=2)
    assert len(loader) == 3
    assert [batch[0].tolist() for batch in loader] == full[2:]
    set_epoch(loader, 4)
    assert [batch[0].tolist() for batch in loader] != full


def test_loader_with_worker_processes_follows_set_epoch() -> None:
    data = _build(dataset="synthetic", synthetic_size=64, synthetic_classes=2)
    loader = build_loader(data.train, batch_size=8, shuffle=True, seed=0, drop_last=True, num_workers=1)
    set_epoch(loader, 0)
    first = [labels for _, labels in loader]
    set_epoch(loader, 0, skip_batches=3)
    rest = [labels for images, labels in loader]
    assert len(rest) == len(first) - 3 and all(
        torch.equal(a, b) for a, b in zip(rest, first[3:], strict=True)
    )
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 16, 16)


def test_loader_rejects_too_little_data_for_one_batch() -> None:
    dataset = torch.utils.data.TensorDataset(torch.zeros(6), torch.zeros(6, dtype=torch.long))
    with pytest.raises(DataError, match="less than one batch of 8"):
        build_loader(dataset, batch_size=8, shuffle=True, seed=0, drop_last=True)
