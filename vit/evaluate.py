"""Evaluation: top-1 accuracy and loss, pre-logits features, and the paper's few-shot linear probe.

Single process by default. Under torch.distributed, pass `distributed=True` on every rank with each rank's
loader sharded (vit.data.build_loader with rank/world_size): top-1 counts are all-reduced and features are
gathered, so every rank returns the global figure (the trainer evaluates this way). With the default, a process
evaluates only its own loader and communicates with no one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vit.data.loader import ShardedSampler
from vit.data.splits import subset_indices

# Items are (image, int label); collated batches are (images, labels) tensors, which DataLoader's type cannot say.
Batches = DataLoader[Any]


class HasPreLogits(Protocol):
    """The timm-style split vit.model.VisionTransformer (and timm's ViT) provide."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() under no_grad, restoring the previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def top1(
    model: nn.Module, loader: Batches, device: torch.device, *, distributed: bool = False
) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) over the loader's images; computed in float32 even under autocast."""
    # float64 sums: exact counts, and a mean loss that does not drift over many batches.
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with _eval_mode(model):
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(images).float()
            totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            totals[1] += (logits.argmax(dim=1) == labels).sum()
            totals[2] += labels.numel()
    if distributed:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        raise ValueError("top1 got no images: the evaluation loader is empty")
    return loss_sum / count, correct / count


def extract_features(
    model: nn.Module, loader: Batches, device: torch.device, *, distributed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) int64) on the CPU: the pre-logits representation,
    `forward_head(forward_features(x), pre_logits=True)`, of every image in loader order.

    distributed=True gathers all ranks' shares and returns them in dataset order (world-size independent);
    it needs the loader's sampler to be a vit.data ShardedSampler, which knows each item's dataset index.
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    vit = cast(HasPreLogits, net)
    features, labels = [], []
    with _eval_mode(net):
        for images, batch_labels in loader:
            tokens = vit.forward_features(images.to(device, non_blocking=True))
            features.append(vit.forward_head(tokens, pre_logits=True).float().cpu())
            labels.append(batch_labels.cpu())
    if not distributed:
        return torch.cat(features), torch.cat(labels).long()
    if not isinstance(loader.sampler, ShardedSampler):
        raise TypeError("extract_features(distributed=True) needs a loader made by vit.data.build_loader")
    # A split smaller than the world leaves some ranks nothing: they still take part in the gather.
    local = (torch.cat(features), torch.cat(labels).long()) if features else None
    shares: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (local, torch.tensor(list(loader.sampler), dtype=torch.int64)))
    parts = [(share, indices) for share, indices in cast(list[tuple[Any, torch.Tensor]], shares) if share]
    feats = torch.cat([share[0] for share, _ in parts])
    labs = torch.cat([share[1] for share, _ in parts])
    order = torch.argsort(torch.cat([indices for _, indices in parts]))
    return feats[order], labs[order]


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (D, K), b (K,)) minimising ||X W + b - Y||² + l2 ||W||², in float64, in closed form.

    The bias is fitted by centering X and Y rather than as an appended ones column: the column's weight would be
    penalised too, pulling the bias towards 0 although the targets' mean is far from it ({-1, 1} one-vs-rest
    targets average -(K-2)/K). Centering gives the exact unpenalised intercept (scikit-learn's Ridge does the
    same). With fewer examples than dimensions (n < d, the few-shot case) the dual form solves an n x n system:
    W = Xᵀ (X Xᵀ + l2 I)⁻¹ Y, equal to the primal (Xᵀ X + l2 I)⁻¹ Xᵀ Y.
    """
    x = features.to(torch.float64)
    y = targets.to(torch.float64)
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if n < d:
        gram = xc @ xc.T + l2 * torch.eye(n, dtype=torch.float64, device=xc.device)
        weights = xc.T @ torch.linalg.solve(gram, yc)
    else:
        gram = xc.T @ xc + l2 * torch.eye(d, dtype=torch.float64, device=xc.device)
        weights = torch.linalg.solve(gram, xc.T @ yc)
    return weights, y_mean - x_mean @ weights


def few_shot_linear_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    shots: int,
    num_classes: int,
    l2: float,
    seed: int,
) -> float:
    """The paper's few-shot linear accuracy: `shots` training examples per class (a seeded choice; a class with
    fewer gives all it has), a ridge regression to {-1, 1}^K one-vs-rest targets, test accuracy of its argmax."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("few-shot evaluation needs training and test features")
    chosen = subset_indices(train_labels.cpu(), shots, seed)
    x, labels = train_feats.cpu()[chosen], train_labels.cpu()[chosen].long()
    targets = 2.0 * F.one_hot(labels, num_classes).to(torch.float64) - 1.0
    weights, bias = fit_ridge(x, targets, l2)
    predicted = (test_feats.cpu().to(torch.float64) @ weights + bias).argmax(dim=1)
    return float((predicted == test_labels.cpu()).double().mean())


def few_shot_eval(
    model: nn.Module,
    train_loader: Batches,
    test_loader: Batches,
    shots: list[int],
    num_classes: int,
    l2: float,
    device: torch.device,
    *,
    seed: int = 0,
    distributed: bool = False,
) -> dict[str, float]:
    """{"few_shot_5": accuracy, ...}: features extracted once, one probe per entry of shots."""
    train_feats, train_labels = extract_features(model, train_loader, device, distributed=distributed)
    test_feats, test_labels = extract_features(model, test_loader, device, distributed=distributed)
    return {
        f"few_shot_{n}": few_shot_linear_accuracy(
            train_feats,
            train_labels,
            test_feats,
            test_labels,
            shots=n,
            num_classes=num_classes,
            l2=l2,
            seed=seed,
        )
        for n in shots
    }
