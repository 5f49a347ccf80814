"""vit.data.splits: the rules of held-out splits (at least one validation image for every class that has two
or more, never a class's only one) and of subsets (fractions round half up, with a floor of one image), and the
exact indices drawn for a seed: a change in how they are drawn would silently change every run's data."""

from __future__ import annotations

import torch

from vit.data.splits import stratified_split, subset_indices

# Two classes: 2 images (0, 1) and 10 images (2..11).
TWO_AND_TEN = torch.tensor([0, 0] + [1] * 10)


def _per_class(labels: torch.Tensor, indices: torch.Tensor) -> list[int]:
    return torch.bincount(labels[indices], minlength=int(labels.max()) + 1).tolist()


def test_every_class_with_two_images_gets_one_validation_image() -> None:
    train, val = stratified_split(TWO_AND_TEN, 0.01, seed=0)  # 0.01 of either class rounds to no image
    assert _per_class(TWO_AND_TEN, val) == [1, 1]
    assert _per_class(TWO_AND_TEN, train) == [1, 9]


def test_validation_never_takes_a_class_s_last_training_image() -> None:
    train, val = stratified_split(TWO_AND_TEN, 0.9, seed=0)  # 0.9 of 2 rounds to 2: capped at 1
    assert _per_class(TWO_AND_TEN, val) == [1, 9]
    assert _per_class(TWO_AND_TEN, train) == [1, 1]


def test_split_indices_are_pinned_for_a_seed() -> None:
    train, val = stratified_split(torch.arange(12) % 3, 0.25, seed=0)
    assert val.tolist() == [0, 1, 11]
    assert train.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_fractional_subset_keeps_at_least_one_image_per_class() -> None:
    assert _per_class(TWO_AND_TEN, subset_indices(TWO_AND_TEN, 0.01, seed=0)) == [1, 1]


def test_fractional_subset_rounds_half_up() -> None:
    labels = torch.zeros(10, dtype=torch.long)
    assert len(subset_indices(labels, 0.25, seed=0)) == 3  # 2.5 images: 3, not Python's round-half-even 2
    assert len(subset_indices(labels, 0.24, seed=0)) == 2
    assert len(subset_indices(labels, 0.35, seed=0)) == 4


def test_subset_indices_are_pinned_for_a_seed() -> None:
    labels = torch.arange(12) % 3
    assert subset_indices(labels, 2, seed=0).tolist() == [0, 1, 3, 7, 8, 11]
    assert subset_indices(labels, 0.5, seed=0).tolist() == [0, 1, 3, 7, 8, 11]  # 0.5 of 4 images is 2
