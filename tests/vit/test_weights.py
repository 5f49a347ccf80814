"""Loading and saving weights: timm-layout files, the original JAX .npz layout, directories, adaptation of
position embeddings and heads, and refusal of files that are not plain tensors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vit.model import VisionTransformer, create_model
from vit.weights import load_pretrained, resize_pos_embed, save_weights

SMALL = {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128}
IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def small_model(
    seed: int, *, num_classes: int = 10, image_size: int = 32, **overrides: object
) -> VisionTransformer:
    torch.manual_seed(seed)
    model = create_model("Ti/4", num_classes=num_classes, image_size=image_size, **{**SMALL, **overrides})
    if num_classes:
        torch.nn.init.normal_(model.get_parameter("head.weight"))  # a zero head would hide head bugs
    return model.eval()


def logits(model: VisionTransformer, images: torch.Tensor = IMAGES) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def assert_same_weights(a: VisionTransformer, b: VisionTransformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source, target = small_model(1), small_model(2)
    save_weights(source, tmp_path / "w.safetensors")
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert_same_weights(source, target)
    assert (report.missing, report.unexpected, report.resized, report.head_reset) == ([], [], {}, False)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_pth_round_trip(tmp_path: Path, wrap: str) -> None:
    source, target = small_model(1), small_model(2)
    state = source.state_dict()
    payload = {
        "plain": state,
        "model": {"model": state, "step": 3},
        "state_dict": {"state_dict": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(payload, tmp_path / "w.pth")
    load_pretrained(target, tmp_path / "w.pth")
    assert_same_weights(source, target)


def test_timm_loads_our_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ours = small_model(1)
    save_weights(ours, tmp_path / "model.safetensors")
    theirs = TimmViT(
        img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0
    )
    theirs.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(IMAGES), logits(ours), atol=1e-5)


def test_checkpoint_and_run_directories(tmp_path: Path) -> None:
    source = small_model(1)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    save_weights(source, checkpoint / "model.safetensors")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000010\n")
    for path in (checkpoint, tmp_path / "run"):
        target = small_model(2)
        assert load_pretrained(target, path).source == checkpoint / "model.safetensors"
        assert_same_weights(source, target)


def to_jax_layout(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, np.ndarray]:
    """Our state dict in the google-research/vision_transformer layout (written independently of vit.weights)."""
    a = {k: v.detach().numpy() for k, v in state.items()}
    dim = a["cls_token"].shape[-1]
    shape_heads = (dim, num_heads, dim // num_heads)
    out = {
        "embedding/kernel": a["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (P, P, C, D)
        "embedding/bias": a["patch_embed.proj.bias"],
        "cls": a["cls_token"],
        "Transformer/posembed_input/pos_embedding": a["pos_embed"],
        "Transformer/encoder_norm/scale": a["norm.weight"],
        "Transformer/encoder_norm/bias": a["norm.bias"],
        "head/kernel": a["head.weight"].T,
        "head/bias": a["head.bias"],
    }
    depth = len({k.split(".")[1] for k in a if k.startswith("blocks.")})
    for i in range(depth):
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[j + "LayerNorm_0/scale"], out[j + "LayerNorm_0/bias"] = a[b + "norm1.weight"], a[b + "norm1.bias"]
        out[j + "LayerNorm_2/scale"], out[j + "LayerNorm_2/bias"] = a[b + "norm2.weight"], a[b + "norm2.bias"]
        qkv_w = np.split(a[b + "attn.qkv.weight"], 3)  # each (D out, D in)
        qkv_b = np.split(a[b + "attn.qkv.bias"], 3)
        for name, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            out[j + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(shape_heads)  # (D, H, Dh)
            out[j + f"MultiHeadDotProductAttention_1/{name}/bias"] = bias.reshape(shape_heads[1:])  # (H, Dh)
        out[j + "MultiHeadDotProductAttention_1/out/kernel"] = a[b + "attn.proj.weight"].T.reshape(
            (*shape_heads[1:], dim)
        )  # (H, Dh, D)
        out[j + "MultiHeadDotProductAttention_1/out/bias"] = a[b + "attn.proj.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[j + f"MlpBlock_3/{dense}/kernel"] = a[b + f"mlp.{fc}.weight"].T
            out[j + f"MlpBlock_3/{dense}/bias"] = a[b + f"mlp.{fc}.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    named: dict[str, Any] = arrays  # savez's keyword arguments are the arrays' names
    np.savez(path, **named)


@pytest.mark.parametrize("prefix", ["", "opt/target/", "params/"])
def test_npz_in_the_jax_layout_gives_the_same_logits(tmp_path: Path, prefix: str) -> None:
    source, target = small_model(1), small_model(2)
    arrays = to_jax_layout(source.state_dict(), num_heads=2)
    save_npz(tmp_path / "ViT.npz", {prefix + k: v for k, v in arrays.items()})
    report = load_pretrained(target, tmp_path / "ViT.npz")
    assert not report.head_reset
    assert (logits(source) - logits(target)).abs().max() <= 1e-5


def test_npz_pre_logits_drops_the_head(tmp_path: Path) -> None:
    source, target = small_model(1), small_model(2)
    arrays = to_jax_layout(source.state_dict(), num_heads=2)
    arrays["pre_logits/kernel"] = np.zeros((64, 64), np.float32)
    arrays["pre_logits/bias"] = np.zeros(64, np.float32)
    save_npz(tmp_path / "ViT.npz", arrays)
    report = load_pretrained(target, tmp_path / "ViT.npz")
    assert report.head_reset
    assert torch.count_nonzero(target.get_parameter("head.weight")) == 0
    assert torch.equal(target.forward_features(IMAGES), source.forward_features(IMAGES))


def test_position_embeddings_are_resampled_to_the_new_grid(tmp_path: Path) -> None:
    source = small_model(1, image_size=16)  # 4x4 grid
    save_weights(source, tmp_path / "w.safetensors")
    target = small_model(2, image_size=32)  # 8x8 grid
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert report.resized == {"pos_embed": ((4, 4), (8, 8))}
    assert target.pos_embed.shape == (1, 65, 64)
    assert torch.equal(target.pos_embed[:, 0], source.pos_embed[:, 0])  # the class slot is kept as is
    # Upsampling keeps the grid's per-channel mean: the patch slots come from the checkpoint, not from init.
    old, new = source.pos_embed[0, 1:], target.pos_embed[0, 1:]
    assert torch.allclose(old.mean(0), new.mean(0), atol=0.01)


def test_resampling_keeps_rows_and_columns_apart() -> None:
    # Channel 0 holds each patch's row, channel 1 its column (timm's row-major order): a transposed or
    # mis-reshaped grid would mix them; the patch part must equal a 2D bicubic resize of the (D, h, w) grid.
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = torch.stack([rows, cols])  # (2, 4, 4)
    pos = torch.cat([torch.full((1, 1, 2), 7.0), grid.flatten(1).T.unsqueeze(0)], dim=1)  # (1, 17, 2)
    resized = resize_pos_embed(pos, (6, 10))  # another aspect ratio: rows and columns resample differently
    expected = F.interpolate(grid.unsqueeze(0), size=(6, 10), mode="bicubic", antialias=True)
    assert torch.equal(resized[0, 0], pos[0, 0])
    patches = resized[0, 1:].T.reshape(2, 6, 10)
    torch.testing.assert_close(patches, expected[0])
    assert torch.all(patches[0].diff(dim=1).abs() < 1e-5) and torch.all(patches[0].diff(dim=0) > 0)
    assert torch.all(patches[1].diff(dim=0).abs() < 1e-5) and torch.all(patches[1].diff(dim=1) > 0)


@pytest.mark.parametrize(
    ("old", "new"),
    [((4, 4), (6, 6)), ((4, 4), (8, 8)), ((14, 14), (24, 24)), ((24, 24), (14, 14)), ((4, 4), (6, 10))],
)
def test_resampling_equals_timm(old: tuple[int, int], new: tuple[int, int]) -> None:
    # timm resamples with bicubic + antialias (PIL's cubic kernel); plain bicubic differs by ~2e-2 on 4x4 -> 6x6.
    pos = torch.randn(1, 1 + old[0] * old[1], 32, generator=torch.Generator().manual_seed(0))
    expected = resample_abs_pos_embed(pos, list(new), num_prefix_tokens=1)
    torch.testing.assert_close(resize_pos_embed(pos, new), expected, rtol=0, atol=1e-6)
    # Not vacuous: the plain bicubic resize the loader used before is measurably different.
    patches = pos[:, 1:].reshape(1, *old, 32).permute(0, 3, 1, 2)
    plain = F.interpolate(patches, size=new, mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 32)
    assert (plain - expected[:, 1:]).abs().max() > 1e-3


def test_resizing_to_the_same_grid_is_the_identity() -> None:
    pos = torch.randn(1, 1 + 7 * 7, 16)
    assert torch.allclose(resize_pos_embed(pos, (7, 7)), pos, atol=1e-6)
    constant = torch.ones(1, 1 + 3 * 3, 4)
    assert torch.allclose(resize_pos_embed(constant, (5, 5)), torch.ones(1, 26, 4), atol=1e-6)


def test_head_of_another_class_count_is_reset_to_zero(tmp_path: Path) -> None:
    source = small_model(1, num_classes=10)
    save_weights(source, tmp_path / "w.safetensors")
    target = small_model(2, num_classes=5)
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert report.head_reset and report.missing == [] and report.unexpected == []
    assert torch.count_nonzero(target.get_parameter("head.weight")) == 0
    assert torch.count_nonzero(target.get_parameter("head.bias")) == 0
    assert torch.equal(target.forward_features(IMAGES), source.forward_features(IMAGES))


def test_other_patch_size_is_a_clear_error(tmp_path: Path) -> None:
    save_weights(small_model(1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="4x4 patches but the model 8x8"):
        load_pretrained(small_model(2, patch_size=8), tmp_path / "w.safetensors")


def test_other_width_is_a_clear_error(tmp_path: Path) -> None:
    save_weights(small_model(1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"different architecture: .*blocks\.0\.mlp\.fc1\.weight"):
        load_pretrained(small_model(2, mlp_dim=256), tmp_path / "w.safetensors")


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = small_model(1).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["blocks.1.norm2.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.norm2.bias'\], unexpected \['extra.weight'\]"):
        load_pretrained(small_model(2), tmp_path / "w.pt")
    report = load_pretrained(small_model(2), tmp_path / "w.pt", strict=False)
    assert (report.missing, report.unexpected) == (["blocks.1.norm2.bias"], ["extra.weight"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("w.safetensors", b"not a safetensors file", r"is not a readable \.safetensors checkpoint"),
        ("w.pth", b"garbage", "is corrupt or holds objects other than tensors"),
        ("w.npz", b"garbage", r"is not a readable \.npz checkpoint"),
        ("w.onnx", b"", r"unknown weights format '\.onnx'"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_pretrained(small_model(1), tmp_path / name)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no weights at"):
        load_pretrained(small_model(1), tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match=r"without model\.safetensors or checkpoints/latest"):
        load_pretrained(small_model(1), tmp_path)


def test_npz_without_vit_keys_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a ViT \.npz checkpoint"):
        load_pretrained(small_model(1), tmp_path / "other.npz")


UNPICKLED: list[str] = []


class Payload:
    """Unpickling this runs a function: exactly what a weights file must never be allowed to do."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (UNPICKLED.append, ("code ran",))


def test_pickle_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    state = small_model(1).state_dict()
    torch.save({"model": state, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pretrained(small_model(2), tmp_path / "evil.pth")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pretrained(small_model(2), tmp_path / "evil.pt")
    assert UNPICKLED == []
