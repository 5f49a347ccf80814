"""The model matches timm's VisionTransformer numerically and in parameter count, and rejects bad configs."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vit.model import create_model, model_config

SMALL = {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_dim": 256}


def small_timm(pool: Literal["cls", "gap"], num_classes: int = 10) -> TimmViT:
    return TimmViT(
        img_size=32,
        patch_size=4,
        num_classes=num_classes,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        global_pool="token" if pool == "cls" else "avg",
    )


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_logits_match_timm_with_its_weights(pool: Literal["cls", "gap"]) -> None:
    torch.manual_seed(0)
    theirs = small_timm(pool).eval()
    # A random head so the logits depend on every feature.
    torch.nn.init.normal_(theirs.get_parameter("head.weight"), std=0.1)
    ours = create_model("Ti/4", num_classes=10, image_size=32, pool=pool, **SMALL).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
        assert torch.allclose(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            theirs.forward_head(theirs.forward_features(x), pre_logits=True),
            atol=1e-5,
        )
    assert got.shape == (4, 10)
    assert (got - expected).abs().max().item() <= 1e-5


def test_timm_loads_our_state_dict() -> None:
    ours = create_model("Ti/4", num_classes=10, image_size=32, **SMALL)
    theirs = small_timm("cls")
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_parameter_count_of_an_allocated_model() -> None:
    model = create_model("Ti/16", num_classes=1000, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == 5_717_416


# vit-facts.md's table; its H/14 figure is the headless model (with a 1000-class head: + 1,281,000).
@pytest.mark.parametrize(
    ("variant", "num_classes", "expected"),
    [
        ("Ti/16", 1000, 5_717_416),
        ("S/16", 1000, 22_050_664),
        ("B/16", 1000, 86_567_656),
        ("L/16", 1000, 304_326_632),
        ("H/14", 0, 630_764_800),
    ],
)
def test_parameter_counts_match_the_paper_table(variant: str, num_classes: int, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = create_model(variant, num_classes=num_classes, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_presets_and_overrides() -> None:
    cfg = model_config("B/32", num_classes=5, image_size=384)
    assert (cfg.depth, cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.patch_size) == (12, 768, 3072, 12, 32)
    cfg = model_config("Ti/16", num_classes=5, image_size=32, patch_size=4, depth=3, embed_dim=None)
    assert (cfg.patch_size, cfg.depth, cfg.embed_dim, cfg.num_tokens) == (4, 3, 192, 65)


@pytest.mark.parametrize("variant", ["B16", "X/16", "B/0", "b/16", "B/16/2", ""])
def test_bad_variant_names_the_expected_form(variant: str) -> None:
    with pytest.raises(ValueError, match=r'variant must look like "B/16"'):
        create_model(variant, num_classes=10, image_size=224)


def test_unknown_override_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown create_model overrides \\['lerning_rate'\\]"):
        create_model("Ti/4", num_classes=10, image_size=32, lerning_rate=0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 30}, "not a multiple of patch_size"),
        ({"embed_dim": 100, "num_heads": 3}, "not divisible by num_heads"),
        ({"pool": "max"}, 'pool must be "cls" or "gap"'),
        ({"drop_rate": 1.0}, "drop_rate must be in"),
    ],
)
def test_bad_shapes_are_refused(overrides: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"image_size": 32, **overrides}
    image_size = kwargs.pop("image_size")
    with pytest.raises(ValueError, match=message):
        create_model("Ti/4", num_classes=10, image_size=image_size, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_shapes(pool: str) -> None:
    model = create_model("Ti/8", num_classes=7, image_size=48, pool=pool, **{**SMALL, "patch_size": 8})
    x = torch.randn(2, 3, 48, 48)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 37, 64)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, 7)


def test_headless_model_returns_features() -> None:
    model = create_model("Ti/4", num_classes=0, image_size=32, **SMALL)
    assert isinstance(model.head, torch.nn.Identity)
    assert "head.weight" not in model.state_dict()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = create_model("Ti/4", num_classes=10, image_size=32)
    assert model.pos_embed.abs().max() <= 0.04  # truncated at two standard deviations
    assert 0.015 < model.pos_embed.std() < 0.025
    weights = model.state_dict()
    assert torch.count_nonzero(weights["head.weight"]) == 0
    assert all(torch.count_nonzero(weights[f"blocks.{i}.attn.qkv.bias"]) == 0 for i in range(12))
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("Ti/4", num_classes=10, image_size=32, drop_rate=0.5, attn_drop_rate=0.5, **SMALL)
    torch.nn.init.normal_(model.get_parameter("head.weight"))
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_dropout_means_identity_modules() -> None:
    model = create_model("Ti/4", num_classes=10, image_size=32, **SMALL)
    assert isinstance(model.pos_drop, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
