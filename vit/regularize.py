"""Batch regularization on the training device, with timm's implementations: random erasing (timm.data.
RandomErasing, per-pixel normal noise, as timm's train.py), then mixup or CutMix with label smoothing folded into
the soft targets (timm.data.Mixup, one draw per batch), and the loss that reads either kind of target.

    regularizer = BatchRegularizer(spec.data, spec.train.label_smoothing, num_classes, device)
    images, targets = regularizer(images, labels)      # the whole batch of this process, before micro batches
    loss = regularizer.loss(logits, targets)

Applied to the process's whole batch, not to each micro batch: how the batch is split does not change what is
drawn. Their random draws come from numpy, Python and the device's torch generator, which checkpoints capture.
With every option off the images pass untouched and the loss is plain cross-entropy, as before these existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy

from vit.config import DataSpec


class BatchRegularizer:
    def __init__(
        self, data: DataSpec, label_smoothing: float, num_classes: int, device: torch.device
    ) -> None:
        self.label_smoothing = label_smoothing
        self.erase = (
            RandomErasing(data.random_erasing, mode="pixel", device=device)
            if data.random_erasing > 0
            else None
        )
        self.mix = (
            Mixup(
                mixup_alpha=data.mixup,
                cutmix_alpha=data.cutmix,
                prob=data.mixup_prob,
                switch_prob=data.mixup_switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if data.mixes
            else None
        )
        self.soft_loss = SoftTargetCrossEntropy()

    @property
    def active(self) -> bool:
        return self.erase is not None or self.mix is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images in [-1, 1] and (B,) labels -> images, and labels or (B, classes) soft targets."""
        if not self.active:
            return images, labels
        images = images.contiguous()  # both write in place; grey images arrive as one channel expanded to 3
        if self.erase is not None:
            images = self.erase(images)
        if self.mix is not None:
            return self.mix(images, labels)
        return images, labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 2:  # soft targets from mixup/CutMix, smoothing included
            return self.soft_loss(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
