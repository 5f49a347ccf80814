"""vit.evaluate's promises beyond the figures in test_evaluate.py: few-shot refuses invalid shot counts and empty
feature sets, distributed feature extraction refuses a plain DataLoader, top-1 computes in float32 and sums in
float64, evaluation restores the model's mode, and a DDP-wrapped model is evaluated through its module (on a
one-process gloo group, so no ranks need spawning)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from tests.vit.test_evaluate import CPU, LogitsAreInputs, _images, _tiny_vit
from vit.data import build_loader
from vit.evaluate import extract_features, few_shot_eval, few_shot_linear_accuracy, fit_ridge, top1

FEATURES = torch.eye(4, 8)
LABELS = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("shots", [0, -1])
def test_few_shot_refuses_fewer_than_one_shot(shots: int) -> None:
    with pytest.raises(ValueError, match=f"shots must be at least 1, got {shots}"):
        few_shot_linear_accuracy(
            FEATURES, LABELS, FEATURES, LABELS, shots=shots, num_classes=2, l2=1.0, seed=0
        )


def test_few_shot_with_one_shot_runs() -> None:
    accuracy = few_shot_linear_accuracy(
        FEATURES, LABELS, FEATURES, LABELS, shots=1, num_classes=2, l2=1e-3, seed=0
    )
    assert 0.5 <= accuracy <= 1.0


@pytest.mark.parametrize("empty", ["train", "test"])
def test_few_shot_refuses_an_empty_feature_set(empty: str) -> None:
    none = (torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    train = none if empty == "train" else (FEATURES, LABELS)
    test = none if empty == "test" else (FEATURES, LABELS)
    with pytest.raises(ValueError, match=r"^few-shot evaluation needs training and test features$"):
        few_shot_linear_accuracy(*train, *test, shots=1, num_classes=2, l2=1.0, seed=0)


def test_distributed_features_need_a_sharded_loader() -> None:
    with pytest.raises(
        TypeError,
        match=r"^extract_features\(distributed=True\) needs a loader made by vit\.data\.build_loader$",
    ):
        extract_features(_tiny_vit(), DataLoader(_images(4), batch_size=2), CPU, distributed=True)


class HalfPrecisionLogits(LogitsAreInputs):
    """Logits in bfloat16, as a model under autocast gives them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(torch.bfloat16)


def test_top1_computes_the_loss_in_float32() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.5], [0.25, 1.0, 0.0]])  # exact in bfloat16
    labels = torch.tensor([2, 1])
    loss, accuracy = top1(HalfPrecisionLogits(), DataLoader(TensorDataset(logits, labels), batch_size=2), CPU)
    expected = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert loss == pytest.approx(expected, rel=1e-6)  # bfloat16 arithmetic is off by ~1e-2
    assert accuracy == 0.5


def test_top1_sums_in_float64() -> None:
    # Batch losses of 1e8 and ln 2: a float32 sum would drop the ln 2 (float32 spacing at 1e8 is 8).
    logits = torch.tensor([[1e8, 0.0], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    loss, _ = top1(LogitsAreInputs(), DataLoader(TensorDataset(logits, labels), batch_size=1), CPU)
    ln2 = float(torch.tensor(math.log(2.0), dtype=torch.float32))
    assert loss == (1e8 + ln2) / 2


def test_evaluation_keeps_an_eval_model_in_eval_mode_without_gradients() -> None:
    class GradRecorder(LogitsAreInputs):
        grad_enabled: list[bool] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.grad_enabled.append(torch.is_grad_enabled())
            return super().forward(x)

    model = GradRecorder().eval()
    data = DataLoader(TensorDataset(torch.randn(2, 3), torch.tensor([0, 1])), batch_size=2)
    top1(model, data, CPU)
    assert model.grad_enabled == [False] and model.modes == [False] and not model.training


def test_features_are_float32_and_labels_int64_whatever_the_model_and_data() -> None:
    model = _tiny_vit().to(torch.bfloat16)
    images = _images(5).tensors[0].to(torch.bfloat16)
    data = TensorDataset(images, torch.arange(5, dtype=torch.int32) % 3)
    features, labels = extract_features(model, DataLoader(data, batch_size=2), CPU)
    assert features.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [0, 1, 2, 0, 1]


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_model_is_evaluated_through_its_module(one_process_group: None) -> None:
    model, data = _tiny_vit(), _images(7)
    loader = build_loader(data, batch_size=3, shuffle=True, seed=0)
    features, labels = extract_features(DistributedDataParallel(model), loader, CPU, distributed=True)
    expected_features, expected_labels = extract_features(model, DataLoader(data, batch_size=3), CPU)
    torch.testing.assert_close(features, expected_features)  # back in dataset order, though shuffled
    assert torch.equal(labels, expected_labels)
    assert top1(nn.Sequential(model), loader, CPU, distributed=True) == pytest.approx(
        top1(model, DataLoader(data, batch_size=3), CPU)
    )


@pytest.mark.parametrize("plain", ["train", "test"])
def test_distributed_few_shot_passes_distributed_on_to_both_extractions(
    one_process_group: None, plain: str
) -> None:
    model, data = _tiny_vit(), _images(6)
    sharded, unsharded = (
        build_loader(data, batch_size=3, shuffle=False, seed=0),
        DataLoader(data, batch_size=3),
    )
    train, test = (unsharded, sharded) if plain == "train" else (sharded, unsharded)
    with pytest.raises(TypeError, match=r"needs a loader made by vit\.data\.build_loader"):
        few_shot_eval(model, train, test, [1], num_classes=3, l2=1.0, device=CPU, distributed=True)


def test_ridge_fits_in_float64_whatever_the_input_precision() -> None:
    generator = torch.Generator().manual_seed(0)
    features, targets = torch.randn(12, 5, generator=generator), torch.randn(12, 3, generator=generator)
    weights, bias = fit_ridge(features, targets, l2=0.5)
    expected_weights, expected_bias = fit_ridge(features.double(), targets.double(), l2=0.5)
    assert weights.dtype == bias.dtype == torch.float64
    torch.testing.assert_close((weights, bias), (expected_weights, expected_bias), rtol=0, atol=0)
