"""train.precision fp8: which layers go to float8 (torchao runs them on the CPU too, which lets this check the
conversion), and a job on a device without float8 matmuls is refused with one line, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit.model import create_model
from vit.precision import UnsupportedPrecision, autocast, check_supported, convert_to_fp8
from vit.train import EXIT_BAD_INPUT, main

CPU = torch.device("cpu")


def test_fp8_converts_the_block_linears_but_not_a_head_of_10_classes(tmp_path: Path) -> None:
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    torch.manual_seed(0)
    model = create_model(
        "Ti/4", num_classes=10, image_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=64
    )
    keys = list(model.state_dict())
    reference = create_model(
        "Ti/4", num_classes=10, image_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=64
    )
    reference.load_state_dict(model.state_dict())
    converted = convert_to_fp8(model)
    assert converted == [
        f"blocks.{i}.{name}" for i in range(2) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]
    assert isinstance(model.blocks[0].mlp.fc1, Float8Linear)
    assert type(model.head) is torch.nn.Linear  # 10 outputs: not a multiple of 16
    assert list(model.state_dict()) == keys  # checkpoints keep their format: a plain model loads one
    save_file(model.state_dict(), str(tmp_path / "fp8.safetensors"))
    plain = create_model(
        "Ti/4", num_classes=10, image_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=64
    )
    plain.load_state_dict(load_file(str(tmp_path / "fp8.safetensors")), strict=True)

    # A non-zero head, so the loss depends on the blocks; float8 and full precision agree to a few per cent.
    torch.nn.init.normal_(model.head.weight, std=0.5)
    reference.head.load_state_dict(model.head.state_dict())
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    with autocast("fp8", CPU):
        loss = F.cross_entropy(model(images).float(), labels)
    loss.backward()
    expected = F.cross_entropy(reference(images), labels)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=0.05)
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert float(model.blocks[0].attn.qkv.weight.grad.abs().sum()) > 0


def test_fp8_is_refused_on_the_cpu() -> None:
    with pytest.raises(UnsupportedPrecision, match="fp8 needs a GPU with float8 matmuls"):
        check_supported("fp8", CPU)
    check_supported("bf16", CPU)  # the others run anywhere


@pytest.mark.skipif(torch.cuda.is_available(), reason="resolves device auto to this machine's CPU")
def test_a_job_asking_fp8_on_a_machine_without_it_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": SYNTHETIC,
        "train": {"steps": 2, "batch_size": 32, "precision": "fp8"},
        "resources": {"device": "auto"},  # the API lets this through: it cannot know the worker's GPU
    }
    path = tmp_path / "fp8.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main([str(path), "--out", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fp8 needs a GPU with float8 matmuls" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step
