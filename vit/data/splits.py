"""Deterministic, class-stratified index selection: held-out splits and the training subsets of data-size studies.

Both draw one seeded permutation per class, so the same (labels, seed) always gives the same indices, and a
smaller subset is a prefix of a larger one (nested subsets, as data-size studies want).
"""

from __future__ import annotations

import math

import torch


def _per_class_orders(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """For each class present, its sample indices in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    # Each class's indices in ascending order, from one stable sort (one pass per class is 1,000 passes over
    # ImageNet's 1.28 M labels: seconds at every job start).
    by_class = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, sorted=True, return_counts=True)[1].tolist()
    return [members[torch.randperm(len(members), generator=generator)] for members in by_class.split(counts)]


def stratified_split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): about val_fraction of each class held out, at least one image of every class
    with two or more (so every class is evaluated), never a class's only image (so every class is trained)."""
    train, val = [], []
    for order in _per_class_orders(labels, seed):
        n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
        val.append(order[:n_val])
        train.append(order[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def subset_indices(labels: torch.Tensor, subset: float | int, seed: int) -> torch.Tensor:
    """Indices of a per-class subset: a float is a fraction in (0, 1] of each class (at least one image), an int
    a count of images per class (a class with fewer keeps all of them)."""
    chosen = []
    for order in _per_class_orders(labels, seed):
        keep = max(1, math.floor(subset * len(order) + 0.5)) if isinstance(subset, float) else subset
        chosen.append(order[:keep])
    return torch.sort(torch.cat(chosen)).values
