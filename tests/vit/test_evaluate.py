"""vit.evaluate: top-1 on a model with known outputs, pre-logits features, the closed-form few-shot probe
against scikit-learn's Ridge, and the distributed reductions over a real two-process gloo group."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vit.data import build_loader
from vit.data.splits import subset_indices
from vit.evaluate import extract_features, few_shot_eval, few_shot_linear_accuracy, fit_ridge, top1
from vit.model import VisionTransformer, create_model

CPU = torch.device("cpu")


class LogitsAreInputs(nn.Module):
    """Returns its input as logits, and records whether it ran in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x


def _tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = create_model("Ti/4", num_classes=3, image_size=8, depth=1, embed_dim=16, num_heads=2, mlp_dim=32)
    assert isinstance(model.head, nn.Linear)
    with torch.no_grad():  # the head starts at zero: give it weights so logits differ between images
        model.head.weight.normal_()
    return model


def _images(n: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n) % 3)


def test_top1_on_known_logits() -> None:
    logits = torch.tensor(
        [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.5]]
    )
    labels = torch.tensor([0, 0, 2, 1, 2])
    model = LogitsAreInputs()
    loss, accuracy = top1(model, DataLoader(TensorDataset(logits, labels), batch_size=2), CPU)
    expected_loss = -sum(
        row[y].item() - math.log(sum(math.exp(v) for v in row.tolist()))
        for row, y in zip(logits, labels, strict=True)
    ) / len(labels)
    assert accuracy == pytest.approx(3 / 5)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert model.modes == [False, False, False] and model.training  # evaluated in eval mode, then restored


def test_top1_rejects_an_empty_loader() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(ValueError, match=r"^top1 got no images: the evaluation loader is empty$"):
        top1(LogitsAreInputs(), empty, CPU)


def test_extract_features_are_the_pre_logits() -> None:
    model = _tiny_vit().eval()
    data = _images(7)
    features, labels = extract_features(model, DataLoader(data, batch_size=3), CPU)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(data.tensors[0]), pre_logits=True)
    assert features.shape == (7, 16) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected)
    assert torch.equal(labels, data.tensors[1])


@pytest.mark.parametrize(("n", "d"), [(40, 6), (6, 40)])  # primal (n >= d) and dual (n < d) forms
def test_fit_ridge_matches_sklearn(n: int, d: int) -> None:
    from sklearn.linear_model import Ridge  # here, not at the top: spawned ranks import this module

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) + 3.0  # off-centre, so the intercept matters
    y = np.where(rng.normal(size=(n, 4)) > 0, 1.0, -1.0)
    weights, bias = fit_ridge(torch.from_numpy(x), torch.from_numpy(y), l2=0.5)
    reference = Ridge(alpha=0.5, fit_intercept=True, solver="cholesky").fit(x, y)
    np.testing.assert_allclose(weights.numpy(), reference.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(bias.numpy(), reference.intercept_, rtol=1e-7, atol=1e-9)


def test_few_shot_accuracy_matches_a_direct_solve() -> None:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    num_classes, d = 5, 12
    centres = rng.normal(size=(num_classes, d))
    train_labels = np.arange(100) % num_classes
    test_labels = rng.integers(0, num_classes, size=300)
    train = centres[train_labels] + 1.5 * rng.normal(size=(100, d))  # overlapping classes: accuracy < 1
    test = centres[test_labels] + 1.5 * rng.normal(size=(300, d))
    args = (torch.from_numpy(train).float(), torch.from_numpy(train_labels))
    test_args = (torch.from_numpy(test).float(), torch.from_numpy(test_labels))
    accuracy = few_shot_linear_accuracy(*args, *test_args, shots=3, num_classes=num_classes, l2=0.1, seed=7)

    # The same 3 examples per class, chosen as the probe documents, solved by scikit-learn.
    chosen = subset_indices(torch.from_numpy(train_labels), 3, seed=7).numpy()
    assert np.bincount(train_labels[chosen]).tolist() == [3] * num_classes
    targets = np.where(train_labels[chosen][:, None] == np.arange(num_classes), 1.0, -1.0)
    ridge = Ridge(alpha=0.1).fit(args[0].double().numpy()[chosen], targets)
    expected = float((ridge.predict(test_args[0].double().numpy()).argmax(1) == test_labels).mean())
    assert accuracy == pytest.approx(expected)
    assert 0.2 < accuracy < 1.0
    again = few_shot_linear_accuracy(*args, *test_args, shots=3, num_classes=num_classes, l2=0.1, seed=7)
    assert again == accuracy


def test_few_shot_separable_problem_is_solved_with_one_shot() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 10.0 * torch.eye(6, 64)  # six classes on orthogonal axes, far apart relative to the noise
    train_labels, test_labels = torch.arange(60) % 6, torch.arange(120) % 6
    train = centres[train_labels] + 0.1 * torch.randn(60, 64, generator=generator)
    test = centres[test_labels] + 0.1 * torch.randn(120, 64, generator=generator)
    for shots in (1, 5):
        accuracy = few_shot_linear_accuracy(
            train, train_labels, test, test_labels, shots=shots, num_classes=6, l2=1e-3, seed=0
        )
        assert accuracy == 1.0


def test_few_shot_eval_names_each_shot_count() -> None:
    model = _tiny_vit()
    train_loader, test_loader = (
        DataLoader(_images(30), batch_size=8),
        DataLoader(_images(12, 1), batch_size=8),
    )
    results = few_shot_eval(model, train_loader, test_loader, [1, 5], num_classes=3, l2=1e-3, device=CPU)
    assert sorted(results) == ["few_shot_1", "few_shot_5"]
    train_feats, train_labels = extract_features(model, train_loader, CPU)
    test_feats, test_labels = extract_features(model, test_loader, CPU)
    direct = few_shot_linear_accuracy(
        train_feats, train_labels, test_feats, test_labels, shots=5, num_classes=3, l2=1e-3, seed=0
    )
    assert results["few_shot_5"] == direct and 0.0 <= results["few_shot_1"] <= 1.0


def _rank_main(rank: int, world_size: int, size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model, data = _tiny_vit(), _images(size)
        loader = build_loader(data, batch_size=4, shuffle=False, seed=0, rank=rank, world_size=world_size)
        loss, accuracy = top1(model, loader, CPU, distributed=True)
        features, labels = extract_features(model, loader, CPU, distributed=True)
        torch.save({"top1": (loss, accuracy), "features": features, "labels": labels}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


# 11 images: shares of 6 and 5. One image: rank 1 has nothing to evaluate, yet must join the gather.
@pytest.mark.parametrize("size", [11, 1])
def test_distributed_evaluation_equals_single_process(tmp_path: Path, size: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, size, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model, data = _tiny_vit(), _images(size)
    single = DataLoader(data, batch_size=4)
    expected_top1 = top1(model, single, CPU)
    expected_features, expected_labels = extract_features(model, single, CPU)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["top1"] == pytest.approx(expected_top1)
        torch.testing.assert_close(result["features"], expected_features)
        assert torch.equal(result["labels"], expected_labels)
