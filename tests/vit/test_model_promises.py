"""vit.model's promises beyond test_model.py: attention dropout (attn_drop_rate) applies by itself, in training
only; the other dropouts off."""

from __future__ import annotations

import torch

from tests.vit.test_model import SMALL
from vit.model import create_model


def test_attention_dropout_alone_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("Ti/4", num_classes=10, image_size=32, attn_drop_rate=0.5, **SMALL)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # only SDPA's dropout_p
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))
