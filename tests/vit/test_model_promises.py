"""vit.model's promises beyond test_model.py: attention dropout (attn_drop_rate) applies by itself, in training
only; the other dropouts off."""

from __future__ import annotations

import torch

from tests.vit.test_model import SMALL
from vit.model import Block, create_model


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
