"""vit.model's promises beyond test_model.py: attention dropout (attn_drop_rate) applies by itself, in training
only; the other dropouts off."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.vit.test_model import SMALL
from vit.config import PRESETS
from vit.model import Block, ViTConfig, create_model, model_config


def test_attention_dropout_alone_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("Ti/4", num_classes=10, image_size=32, attn_drop_rate=0.5, **SMALL)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # only SDPA's dropout_p
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))


def test_dropout_follows_every_dense_layer_but_qkv_and_the_position_embedding() -> None:
    model = create_model("Ti/4", num_classes=10, image_size=32, drop_rate=0.1, **SMALL)
    blocks = [block for block in model.blocks if isinstance(block, Block)]
    places: list[torch.nn.Module] = [model.pos_drop]
    places += [drop for b in blocks for drop in (b.attn.proj_drop, b.mlp.drop1, b.mlp.drop2)]
    assert all(isinstance(drop, torch.nn.Dropout) and drop.p == 0.1 for drop in places)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(blocks) == SMALL["depth"] and len(dropouts) == len(places) == 1 + 3 * len(
        blocks
    )  # and nowhere else


@pytest.mark.parametrize("field", ["patch_size", "embed_dim", "depth", "num_heads", "mlp_dim"])
def test_sizes_must_be_positive(field: str) -> None:
    # patch_size -16 divides 224 and embed_dim -768 is divisible by 12: only the positivity check can refuse.
    sizes: dict[str, Any] = {field: {"patch_size": -16, "embed_dim": -768, "num_heads": -12}.get(field, 0)}
    with pytest.raises(
        ValueError, match=r"^patch_size, embed_dim, depth, num_heads and mlp_dim must be positive$"
    ):
        ViTConfig(**sizes)


def test_negative_class_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^num_classes must be >= 0, got -1$"):
        ViTConfig(num_classes=-1)


def test_bad_variant_lists_the_presets() -> None:
    with pytest.raises(ValueError, match=f"one of {', '.join(PRESETS)}, "):
        model_config("Q/16", num_classes=10, image_size=32)


def test_timm_style_attributes() -> None:
    model = create_model("Ti/4", num_classes=10, image_size=32, **SMALL)
    assert model.num_classes == 10 and model.num_features == SMALL["embed_dim"]
    assert model.patch_embed.patch_size == 4


def test_sizes_of_one_are_allowed() -> None:
    cfg = ViTConfig(image_size=1, patch_size=1, embed_dim=1, depth=1, num_heads=1, mlp_dim=1, num_classes=0)
    assert cfg.grid_size == 1 and cfg.num_tokens == 2
