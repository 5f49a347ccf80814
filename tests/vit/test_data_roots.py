"""A dataset whose links lead outside the allowed data directories (VITQ_DATA_ROOTS, set by the worker) is
refused when it is built, before any file is read; links that stay inside are followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.vit.shard_helpers import packed_folder
from tests.vit.test_data import _write_fake_pets, _write_images
from vit.config import DataSpec
from vit.data import DataError, build_datasets
from vit.data.shard_scan import CACHE_ENV
from vit.data_roots import DATA_ROOTS_ENV
from worker.launch import trainer_env


def _build(**fields: object) -> None:
    build_datasets(DataSpec.model_validate(fields), image_size=16, seed=0)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The allowed data directory, with a secret beside it (another owner's run, a system file)."""
    data = tmp_path / "data"
    _write_images(data / "pics", {"cat": 3, "dog": 3})
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    _write_images(tmp_path / "elsewhere", {"owl": 3})
    monkeypatch.setenv(DATA_ROOTS_ENV, str(data))
    return data


def test_an_image_linking_outside_is_refused(data: Path) -> None:
    (data / "pics" / "cat" / "img9.png").symlink_to(data.parent / "secret.png")
    with pytest.raises(DataError, match=r"cat/img9.png links to .*secret.png, outside the data directory"):
        _build(dataset="imagefolder", root=str(data / "pics"))


def test_a_class_folder_or_root_linking_outside_is_refused(data: Path) -> None:
    (data / "pics" / "owl").symlink_to(data.parent / "elsewhere" / "owl")
    with pytest.raises(DataError, match=r"pics/owl links to"):
        _build(dataset="imagefolder", root=str(data / "pics"))
    (data / "pics" / "owl").unlink()
    (data / "outside").symlink_to(data.parent / "elsewhere")
    with pytest.raises(DataError, match=r"resolves to .*elsewhere, outside the data directory"):
        _build(dataset="imagefolder", root=str(data / "outside"))


def test_links_within_the_data_directory_are_followed_and_checked(data: Path) -> None:
    _write_images(data / "shared", {"owl": 3})
    (data / "pics" / "owl").symlink_to(data / "shared" / "owl")
    (data / "shared" / "owl" / "loop").symlink_to(data / "shared")  # a loop ends
    _build(dataset="imagefolder", root=str(data / "pics"))  # inside: fine
    (data / "shared" / "owl" / "img9.png").symlink_to(data.parent / "secret.png")  # one hop further out
    with pytest.raises(DataError, match=r"owl/img9\.png links to"):
        _build(dataset="imagefolder", root=str(data / "pics"))


def test_a_torchvision_dataset_is_checked_before_it_is_read(data: Path) -> None:
    _write_fake_pets(data / "pets")
    _build(dataset="pets", root=str(data / "pets"), subset=2)
    images = data / "pets" / "oxford-iiit-pet" / "images"
    victim = sorted(images.iterdir())[0]
    victim.unlink()
    victim.symlink_to(data.parent / "secret.png")
    with pytest.raises(DataError, match=rf"{victim.name} links to"):
        _build(dataset="pets", root=str(data / "pets"), subset=2)


def test_without_the_variable_nothing_is_confined(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (data / "pics" / "cat" / "img9.png").symlink_to(data.parent / "secret.png")
    monkeypatch.delenv(DATA_ROOTS_ENV)
    _build(dataset="imagefolder", root=str(data / "pics"))  # the trainer run by hand, outside the service


def test_the_worker_names_the_data_roots_to_the_trainer(tmp_path: Path) -> None:
    env = trainer_env(1, data_roots=[tmp_path / "a", tmp_path / "b"])
    assert env[DATA_ROOTS_ENV] == os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])


def test_a_shard_or_member_table_linking_outside_is_refused(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(data.parent / "cache"))
    shards = packed_folder(data, train=3, val=0)  # data/shards: several train shards
    first, second = sorted(shards.glob("train-*.tar"))[:2]
    (data.parent / "copies").mkdir()
    for path in (first, Path(f"{second}.idx")):  # the same bytes, moved out and linked back
        path.rename(data.parent / "copies" / path.name)
        path.symlink_to(data.parent / "copies" / path.name)
    with pytest.raises(DataError, match=rf"{first.name} links to .*copies/{first.name}, outside the data"):
        _build(dataset="shards", root=str(shards))  # at start: each shard's size is checked, so is its place
    pattern = f"{shards}/train-{{000000..{len(list(shards.glob('train-*.tar'))) - 1:06d}}}.tar"
    with pytest.raises(DataError, match=rf"{first.name} links to .*copies/{first.name}, outside the data"):
        _build(dataset="shards", root=pattern)  # before its index is scanned
    first.unlink()
    (data / "kept.tar").write_bytes((data.parent / "copies" / first.name).read_bytes())
    first.symlink_to(data / "kept.tar")  # a link that stays inside is fine
    train = build_datasets(DataSpec(dataset="shards", root=str(shards)), image_size=16, seed=0).train
    train[0]  # from the first shard
    member_table = f"{second.name}.idx links to .*copies/{second.name}.idx, outside the data directory"
    with pytest.raises(DataError, match=member_table):  # a member table is read when its shard is first read
        for index in range(len(train)):
            train[index]
