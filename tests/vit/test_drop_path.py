"""Stochastic depth (model.drop_path_rate) is timm's: with the same weights and random state, a timm
VisionTransformer with the same drop_path_rate gives the same training-mode output and gradients."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vit.model import DropPath, create_model

SMALL = {"patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_dim": 64}


def test_training_output_and_gradients_match_timm_with_the_same_random_state() -> None:
    torch.manual_seed(0)
    ours = create_model("Ti/4", num_classes=5, image_size=16, drop_path_rate=0.5, **SMALL).train()
    theirs = TimmViT(
        img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
        drop_path_rate=0.5,
    ).train()  # fmt: skip
    torch.nn.init.normal_(ours.get_parameter("head.weight"), std=0.5)  # logits that depend on the features
    theirs.load_state_dict(ours.state_dict(), strict=True)
    # Linear over depth from 0, as timm: the first block has none, the last the full rate.
    assert [getattr(b.drop_path1, "p", 0.0) for b in ours.blocks] == [
        getattr(b.drop_path1, "drop_prob", 0.0) for b in theirs.blocks
    ]
    assert isinstance(ours.blocks[3].drop_path2, DropPath) and ours.blocks[3].drop_path2.p == 0.5
    x = torch.randn(16, 3, 16, 16)

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(1)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run(ours)
    their_out, their_grads = run(theirs)
    torch.testing.assert_close(out, their_out, rtol=0, atol=1e-5)
    assert grads.keys() == their_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The draws matter: another random state drops other samples' branches, and evaluation drops none.
    torch.manual_seed(2)
    assert not torch.allclose(ours(x), out, atol=1e-3)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), ours(x), rtol=0, atol=0)


def test_off_by_default_and_identity_when_zero() -> None:
    model = create_model("Ti/4", num_classes=5, image_size=16, **SMALL)
    assert model.cfg.drop_path_rate == 0.0
    assert not any(isinstance(m, DropPath) for m in model.modules())
