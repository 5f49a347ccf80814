"""Checkpoint promises beyond test_checkpoint.py: the training state never unpickles arbitrary objects and must be
a dict, meta.json must be an object, resume takes the newest complete checkpoint when `latest` is stale or names
anything but a checkpoint, a leftover `.old-step-*` directory neither counts nor blocks a save, and saving
creates a missing run directory."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch

from tests.vit.test_checkpoint import _save
from vit import checkpoint, rundir

UNPICKLED: list[str] = []


class Payload:
    """Unpickling this runs a function: what loading a training state must never allow."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (UNPICKLED.append, ("code ran",))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_state_with_arbitrary_objects_is_never_unpickled(tmp_path: Path) -> None:
    saved = _save(tmp_path, 10, keep=1)
    torch.save({"step": 10, "payload": Payload()}, saved / rundir.STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load_state(saved)
    assert UNPICKLED == []


def test_state_is_never_unpickled_even_when_the_environment_asks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.load's default obeys TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; an explicit weights_only=True does not.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    saved = _save(tmp_path, 10, keep=1)
    torch.save({"step": 10, "payload": Payload()}, saved / rundir.STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load_state(saved)
    assert UNPICKLED == []


def test_state_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    saved = _save(tmp_path, 10, keep=1)
    torch.save([1, 2], saved / rundir.STATE_FILE)
    with pytest.raises(ValueError, match=r"state\.pt does not hold a training state"):
        checkpoint.load_state(saved)


def test_state_and_meta_round_trip(tmp_path: Path) -> None:
    before = time.time()
    saved = _save(tmp_path, 10, keep=1)
    state = checkpoint.load_state(saved)
    assert state["step"] == 10 and torch.equal(state["values"], torch.arange(3))
    meta = checkpoint.read_meta(saved)
    assert meta["step"] == 10 and meta["spec"] == {"kind": "x"} and before <= meta["time"] <= time.time()
    # meta.json is for people too: indented by two spaces, one trailing newline.
    assert (saved / rundir.META_FILE).read_text() == json.dumps(meta, indent=2) + "\n"


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3", "null"])
def test_meta_that_is_not_an_object_is_refused(tmp_path: Path, content: str) -> None:
    saved = _save(tmp_path, 10, keep=1)
    (saved / rundir.META_FILE).write_text(content)
    with pytest.raises(ValueError, match=r"meta\.json is not a JSON object"):
        checkpoint.read_meta(saved)


def _three_checkpoints(run_dir: Path) -> Path:
    for step in (10, 20, 30):
        _save(run_dir, step, keep=3)
    return rundir.checkpoints_root(run_dir)


def test_stale_latest_resumes_from_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    root = _three_checkpoints(tmp_path)
    (root / "latest").write_text("step-000040\n")  # a checkpoint that was never completed
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000030"
    (root / "step-000030" / rundir.META_FILE).unlink()  # an incomplete newest one
    (root / "latest").write_text("step-000030\n")
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000020"
    assert rundir.latest_checkpoint_step(tmp_path) == 20


def test_latest_names_its_checkpoint_even_when_newer_ones_exist(tmp_path: Path) -> None:
    root = _three_checkpoints(tmp_path)
    (root / "latest").write_text("step-000010\n")
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000010"


@pytest.mark.parametrize("name", ["..", "../outside", "step-000010/../../outside", "step-000010/.."])
def test_latest_naming_anything_but_a_checkpoint_is_ignored(tmp_path: Path, name: str) -> None:
    root = _three_checkpoints(tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / rundir.META_FILE).write_text("{}")
    (root / rundir.META_FILE).write_text("{}")  # so that `step-000010/..` would look complete
    (root / "latest").write_text(name + "\n")
    assert rundir.latest_checkpoint(tmp_path) == root / "step-000030"


def test_leftover_old_directory_neither_counts_nor_blocks_a_save(tmp_path: Path) -> None:
    first = _save(tmp_path, 7, keep=3)
    root = rundir.checkpoints_root(tmp_path)
    leftover = root / ".old-step-000007"  # a crash between the two renames of a re-save
    leftover.mkdir()
    (leftover / rundir.META_FILE).write_text(json.dumps({"step": 7}))
    assert rundir.complete_checkpoints(tmp_path) == [first]
    again = _save(tmp_path, 7, keep=3)
    assert again == first and rundir.complete_checkpoints(tmp_path) == [first]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000007"]


def test_saving_creates_a_missing_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "not" / "yet"
    saved = _save(run_dir, 5, keep=1)
    assert saved == run_dir / "checkpoints" / "step-000005"
    assert rundir.latest_checkpoint(run_dir) == saved
    assert sorted(p.name for p in saved.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]


def test_keep_one_leaves_only_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=1)
    assert [p.name for p in rundir.complete_checkpoints(tmp_path)] == ["step-000003"]
