"""vit.weights' promises beyond the round trips in test_weights.py: strict loading refuses missing keys alone and
unexpected keys alone, .npz extras are reported, only tensors are accepted, a wrapper prefix is stripped only
when every key has it, position embeddings of another width or a non-square grid are refused, a run directory's
`latest` must name a checkpoint, and a model without a head or a checkpoint without one load as documented."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tests.vit.test_weights import IMAGES, UNPICKLED, Payload, logits, save_npz, small_model, to_jax_layout
from vit.weights import (
    jax_to_timm,
    load_pretrained,
    read_state_dict,
    resize_pos_embed,
    resolve_weights_file,
    save_weights,
)


def _state(seed: int = 1) -> dict[str, torch.Tensor]:
    return dict(small_model(seed).state_dict())


def test_strict_refuses_missing_keys_alone(tmp_path: Path) -> None:
    state = _state()
    del state["blocks.1.norm2.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(
        ValueError, match=r"missing \['blocks.1.norm2.bias'\], unexpected none \(pass strict=False"
    ):
        load_pretrained(small_model(2), tmp_path / "w.pt")


def test_strict_refuses_unexpected_keys_alone(tmp_path: Path) -> None:
    state = _state()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"missing none, unexpected \['extra.weight'\]"):
        load_pretrained(small_model(2), tmp_path / "w.pt")


def test_not_strict_loads_what_fits(tmp_path: Path) -> None:
    state = _state()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    target = small_model(2)
    report = load_pretrained(target, tmp_path / "w.pt", strict=False)
    assert (report.missing, report.unexpected, report.head_reset) == ([], ["extra.weight"], False)
    assert torch.equal(logits(target), logits(small_model(1)))


def test_npz_extras_are_reported_as_unexpected(tmp_path: Path) -> None:
    source = small_model(1)
    arrays = to_jax_layout(source.state_dict(), num_heads=2)
    arrays["Transformer/extra/kernel"] = arrays["embedding/bias"]
    save_npz(tmp_path / "ViT.npz", arrays)
    with pytest.raises(ValueError, match=r"unexpected \['npz:Transformer/extra/kernel'\]"):
        load_pretrained(small_model(2), tmp_path / "ViT.npz")
    target = small_model(2)
    report = load_pretrained(target, tmp_path / "ViT.npz", strict=False)
    assert report.unexpected == ["npz:Transformer/extra/kernel"] and report.missing == []
    assert (logits(source) - logits(target)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "content",
    [
        {"pos_embed": torch.zeros(1), "step": 3},
        {"model": {"pos_embed": torch.zeros(1), "step": 3}},
        {"model": "not a dict", "pos_embed": 1.0},
        [torch.zeros(1)],
    ],
    ids=["int-value", "int-under-model", "str-model", "list"],
)
def test_anything_but_a_dict_of_tensors_is_refused(tmp_path: Path, content: object) -> None:
    torch.save(content, tmp_path / "w.pth")
    path = re.escape(str(tmp_path / "w.pth"))
    with pytest.raises(
        ValueError, match=rf"checkpoint: {path} is not a state dict of tensors \(nor one under 'model'"
    ):
        read_state_dict(tmp_path / "w.pth")


def test_state_dict_is_taken_from_model_before_state_dict(tmp_path: Path) -> None:
    state = _state()
    torch.save({"model": state, "state_dict": {"x": torch.zeros(1)}}, tmp_path / "w.pth")
    assert read_state_dict(tmp_path / "w.pth").keys() == state.keys()
    torch.save({"optimizer": {"x": torch.zeros(1)}, "state_dict": state}, tmp_path / "w.bin")
    assert read_state_dict(tmp_path / "w.bin").keys() == state.keys()


def test_a_prefix_on_only_some_keys_is_kept(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in _state().items()}
    state["cls_token"] = state.pop("module.cls_token")
    torch.save(state, tmp_path / "w.pt")
    assert set(read_state_dict(tmp_path / "w.pt")) == set(state)
    report = load_pretrained(small_model(2), tmp_path / "w.pt", strict=False)
    assert "module.pos_embed" in report.unexpected and "pos_embed" in report.missing
    assert "cls_token" not in report.missing


def test_ddp_around_a_compiled_model_is_stripped_of_both_prefixes(tmp_path: Path) -> None:
    state = _state()
    save_file({f"module._orig_mod.{k}": v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert read_state_dict(tmp_path / "w.safetensors").keys() == state.keys()


def test_saved_weights_have_no_wrapper_prefix_and_timm_metadata(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    model = small_model(1)
    save_weights(Wrapper(model), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as saved:
        assert set(saved.keys()) == set(model.state_dict())
        assert saved.metadata() == {"format": "pt"}


def test_position_embedding_of_another_width_is_refused(tmp_path: Path) -> None:
    state = _state()
    state["pos_embed"] = torch.zeros(1, 17, 32)  # another grid and another width
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(
        ValueError, match=r"pos_embed of shape \(1, 17, 32\) does not fit the model's \(1, 65, 64\)"
    ):
        load_pretrained(small_model(2), tmp_path / "w.pt")
    state["pos_embed"] = torch.zeros(17, 64)  # no batch dimension
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"pos_embed of shape \(17, 64\) does not fit"):
        load_pretrained(small_model(2), tmp_path / "w.pt")


def test_position_embedding_of_a_non_square_grid_is_refused(tmp_path: Path) -> None:
    state = _state()
    state["pos_embed"] = torch.zeros(1, 1 + 12, 64)  # 3x4 patches
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="pos_embed has 12 patch positions: not a square grid"):
        load_pretrained(small_model(2), tmp_path / "w.pt")


@pytest.mark.parametrize("name", ["..", ".", "../step-000010", "", "a/b"])
def test_latest_must_name_a_checkpoint_directory(tmp_path: Path, name: str) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text(name + "\n")
    with pytest.raises(ValueError, match="should name a checkpoint directory"):
        resolve_weights_file(tmp_path)


def test_latest_naming_a_missing_checkpoint_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-000010\n")
    with pytest.raises(
        FileNotFoundError, match=r"names 'step-000010', but .*model\.safetensors does not exist"
    ):
        resolve_weights_file(tmp_path)


def test_a_model_without_head_takes_everything_else(tmp_path: Path) -> None:
    source = small_model(1)
    save_weights(source, tmp_path / "w.safetensors")
    target = small_model(2, num_classes=0)
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert (report.missing, report.unexpected, report.head_reset) == ([], [], False)
    assert torch.equal(target.forward_features(IMAGES), source.forward_features(IMAGES))


def test_a_checkpoint_without_head_gives_a_zero_head(tmp_path: Path) -> None:
    source = small_model(1, num_classes=0)
    save_weights(source, tmp_path / "w.safetensors")
    target = small_model(2)
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert (report.missing, report.unexpected, report.head_reset) == ([], [], True)
    assert torch.count_nonzero(target.get_parameter("head.weight")) == 0
    assert torch.count_nonzero(target.get_parameter("head.bias")) == 0


def test_suffixes_are_case_insensitive(tmp_path: Path) -> None:
    torch.save(_state(), tmp_path / "W.PTH")
    assert read_state_dict(tmp_path / "W.PTH").keys() == _state().keys()


def test_a_file_that_vanishes_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "gone.pt")


def test_npz_without_embedding_names_what_it_looked_for() -> None:
    with pytest.raises(
        ValueError,
        match=r"^not a ViT \.npz checkpoint: no embedding/kernel \(under opt/target/, params/ or none\)$",
    ):
        jax_to_timm({"weights": np.zeros(3)})


def test_resized_position_embedding_keeps_its_dtype() -> None:
    pos = torch.randn(1, 1 + 16, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    resized = resize_pos_embed(pos, (3, 3))
    assert resized.dtype == torch.bfloat16 and resized.shape == (1, 10, 8)
    assert torch.equal(resized[:, 0], pos[:, 0])  # the class token's slot is kept as it is


def test_npz_of_a_deeper_model_converts_every_block(tmp_path: Path) -> None:
    source, target = small_model(1, depth=3), small_model(2, depth=3)
    save_npz(tmp_path / "ViT.npz", to_jax_layout(source.state_dict(), num_heads=2))
    report = load_pretrained(target, tmp_path / "ViT.npz")
    assert report.unexpected == [] and report.missing == []
    assert (logits(source) - logits(target)).abs().max() <= 1e-5


def test_other_patch_size_error_says_which_model_to_build(tmp_path: Path) -> None:
    save_weights(small_model(1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError) as raised:
        load_pretrained(small_model(2, patch_size=8), tmp_path / "w.safetensors")
    assert str(raised.value) == (
        "the checkpoint uses 4x4 patches but the model 8x8: build the model with patch_size 4 (e.g. variant '.../4')"
    )


def test_a_non_square_patch_kernel_is_named_as_it_is(tmp_path: Path) -> None:
    state = _state()
    state["patch_embed.proj.weight"] = torch.zeros(64, 3, 4, 2)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(
        ValueError,
        match=r"^the checkpoint uses 4x2 patches but the model 4x4: .* patch_size 2 \(e\.g\. variant '\.\.\./2'\)$",
    ):
        load_pretrained(small_model(2), tmp_path / "w.pt")


def test_every_mismatched_shape_is_named(tmp_path: Path) -> None:
    save_weights(small_model(1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError) as raised:
        load_pretrained(small_model(2, mlp_dim=256), tmp_path / "w.safetensors")
    prefix, _, listed = str(raised.value).partition(" has a different architecture: ")
    assert prefix == str(tmp_path / "w.safetensors")
    expected = [
        f"blocks.{i}.mlp.{name}: checkpoint {old}, model {new}"
        for i in range(2)
        for name, old, new in (
            ("fc1.weight", (128, 64), (256, 64)),
            ("fc1.bias", (128,), (256,)),
            ("fc2.weight", (64, 128), (64, 256)),
        )
    ]
    assert sorted(listed.split("; ")) == sorted(expected)


def test_a_directory_that_is_neither_checkpoint_nor_run_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as raised:
        resolve_weights_file(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path} is a directory without model.safetensors or checkpoints/latest: "
        "expected a checkpoint directory or a run directory"
    )


def test_weights_are_never_unpickled_even_when_the_environment_asks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.load's default obeys TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; an explicit weights_only=True does not.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"model": _state(), "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_state_dict(tmp_path / "evil.pth")
    assert UNPICKLED == []


def test_a_refused_pickle_names_only_torch_s_reason(tmp_path: Path) -> None:
    torch.save({"model": _state(), "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError) as raised:
        read_state_dict(tmp_path / "evil.pth")
    message = str(raised.value)
    # torch's paragraph about weights_only and its documentation link are cut; its one-line reason is kept.
    assert message.startswith(
        f"{tmp_path / 'evil.pth'} is corrupt or holds objects other than tensors and plain containers: "
        "refusing to unpickle it (Unsupported global: GLOBAL getattr was not an allowed global by default. "
    )
    assert message.endswith("if you trust this class/function.)")
    assert "\n" not in message and "\t" not in message and "Check the documentation" not in message
