"""Checkpoint layout: atomic directories, `latest`, keep-last-K, safe loading, weights usable by vit and timm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

from tests.vit.tiny_specs import TINY_MODEL
from vit import checkpoint, rundir
from vit.model import create_model
from vit.train import main
from vit.weights import load_pretrained


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _save(run_dir: Path, step: int, keep: int) -> Path:
    model = create_model("Ti/4", num_classes=3, image_size=16, embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    state = {"step": step, "data": {"epoch": 0, "batch": step}, "values": torch.arange(3)}
    return checkpoint.save_checkpoint(
        run_dir, step=step, model=model, state=state, spec={"kind": "x"}, keep=keep
    )


def test_keeps_the_newest_k_and_points_latest_at_the_newest(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000020", "step-000030"]
    assert (root / "latest").read_text() == "step-000030\n"
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000030"
    assert sorted(p.name for p in (root / "step-000030").iterdir()) == [
        "meta.json",
        "model.safetensors",
        "state.pt",
    ]
    meta = json.loads((root / "step-000030" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["spec"] == {"kind": "x"} and isinstance(meta["time"], float)


def test_state_loads_with_weights_only(tmp_path: Path) -> None:
    path = _save(tmp_path, 5, keep=1)
    state = torch.load(path / "state.pt", weights_only=True)
    assert state["step"] == 5 and torch.equal(state["values"], torch.arange(3))
    assert checkpoint.load_state(path)["data"] == {"epoch": 0, "batch": 5}


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    first = _save(tmp_path, 7, keep=3)
    second = _save(tmp_path, 7, keep=3)
    assert first == second and rundir.complete_checkpoints(tmp_path) == [second]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_incomplete_directories_are_never_taken_for_checkpoints(tmp_path: Path) -> None:
    _save(tmp_path, 10, keep=3)
    root = tmp_path / "checkpoints"
    # What a crash mid-save can leave: a temporary directory, and a step directory without meta.json.
    (root / ".tmp-step-000020").mkdir()
    (root / "step-000030").mkdir()
    (root / "step-000030" / "model.safetensors").write_bytes(b"partial")
    assert rundir.complete_checkpoints(tmp_path) == [root / "step-000010"]
    # A `latest` naming a missing or incomplete directory falls back to the newest complete one.
    (root / "latest").write_text("step-000030\n")
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000010"
    # The next save clears the leftover temporary directory of its own step.
    _save(tmp_path, 20, keep=3)
    assert not (root / ".tmp-step-000020").exists()
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000020"


def test_no_checkpoint_in_an_empty_run_dir(tmp_path: Path) -> None:
    assert rundir.latest_checkpoint(tmp_path) is None


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    spec = {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": {"dataset": "synthetic", "synthetic_size": 128, "synthetic_classes": 4, "num_workers": 0},
        "train": {"steps": 6, "batch_size": 16, "checkpoint_every": 2, "keep_checkpoints": 2, "log_every": 2},
        "resources": {"device": "cpu"},
    }
    spec_path = run_dir.parent / f"{run_dir.name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    assert main([str(spec_path), "--out", str(run_dir)]) == 0
    return run_dir


def test_trainer_checkpoints_follow_the_layout(trained_run: Path) -> None:
    root = trained_run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000006"]
    state = torch.load(root / "step-000006" / "state.pt", weights_only=True)
    assert state["step"] == 6
    assert set(state) == {"step", "data", "optimizer", "scheduler", "rng"}
    assert state["scheduler"]["last_epoch"] == 6
    assert len(state["rng"]) == 1 and torch.is_tensor(state["rng"][0]["torch"])
    meta = json.loads((root / "step-000006" / "meta.json").read_text())
    assert meta["spec"] == json.loads((trained_run / "spec.json").read_text())
    assert meta["spec"]["optim"]["name"] == "adamw"  # the resolved spec, defaults filled in


def test_trainer_weights_load_into_vit_and_timm(trained_run: Path) -> None:
    weights = trained_run / "checkpoints" / "step-000006" / "model.safetensors"
    ours = create_model(num_classes=4, **TINY_MODEL)
    report = load_pretrained(ours, trained_run)  # a run directory resolves to its latest checkpoint
    assert report.source == weights and not report.head_reset and not report.resized
    timm = TimmViT(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=4
    )
    timm.load_state_dict(load_file(str(weights)), strict=True)
    images = torch.randn(3, 3, 16, 16)
    ours.eval()
    timm.eval()
    with torch.no_grad():
        assert torch.allclose(ours(images), timm(images), atol=1e-5)
        # Trained, not the zero-initialized head: the checkpoint holds what training produced.
        assert ours(images).abs().max() > 0
