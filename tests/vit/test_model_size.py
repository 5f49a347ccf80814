"""vit/model_size.py counts what vit.model builds: the API bounds a job's model by this arithmetic alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.vit.tiny_specs import TINY_MODEL
from vit.config import DataSpec, ModelSpec
from vit.data import build_datasets
from vit.model import create_model
from vit.model_size import known_classes, model_parameters


def built_parameters(model: ModelSpec, num_classes: int, device: str = "cpu") -> int:
    with torch.device(device):
        built = create_model(model.variant, num_classes=num_classes, **model.create_kwargs())
    return sum(p.numel() for p in built.parameters())


@pytest.mark.parametrize(
    ("model", "num_classes"),
    [
        (TINY_MODEL, 4),
        ({**TINY_MODEL, "pool": "gap"}, 10),
        ({**TINY_MODEL, "patch_size": 8, "mlp_dim": 24}, 0),  # no head
        ({"variant": "Ti/8", "image_size": 24, "depth": 1, "embed_dim": 12, "num_heads": 3}, 3),
        ({"variant": "S/16", "image_size": 32, "depth": 1}, 1000),
    ],
)
def test_count_equals_the_built_model(model: dict[str, Any], num_classes: int) -> None:
    spec = ModelSpec.model_validate(model)
    assert model_parameters(spec, num_classes=num_classes) == built_parameters(spec, num_classes)


@pytest.mark.parametrize(("variant", "image_size"), [("B/16", 224), ("H/14", 1022)])
def test_count_equals_a_large_model_built_without_memory(variant: str, image_size: int) -> None:
    """The presets themselves, on the meta device (shapes only); B/16 has timm's published count."""
    spec = ModelSpec(variant=variant, image_size=image_size)
    counted = model_parameters(spec, num_classes=1000)
    assert counted == built_parameters(spec, 1000, device="meta")
    if variant == "B/16":
        assert counted == 86_567_656  # timm's vit_base_patch16_224


@pytest.mark.parametrize(
    "data", [{"dataset": "digits"}, {"dataset": "synthetic", "synthetic_size": 64, "synthetic_classes": 7}]
)
def test_known_classes_are_the_datasets(data: dict[str, Any]) -> None:
    spec = DataSpec.model_validate(data)
    assert known_classes(spec) == build_datasets(spec, image_size=8, seed=0).num_classes


def test_file_datasets_have_no_known_class_count() -> None:
    assert known_classes(DataSpec(dataset="imagefolder", root="/data/x")) is None
