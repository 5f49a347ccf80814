"""Packed shards: pack keeps every image and label of real JPEG/PNG folders (and torchvision's Pets layout), the
shards are WebDataset shards, reading from disk and over a real HTTP server gives the same images, the epoch
order is complete, seeded and local, and truncated or corrupt shards are named (at start, on read, by check)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import webdataset as wds

from tests.vit.shard_helpers import CLASSES, http_server, packed_folder, write_photos
from tests.vit.test_data import _write_fake_pets
from vit.config import DataSpec
from vit.data import DataError, Datasets, ShardedSampler, build_datasets, build_loader, set_epoch
from vit.data.pack import main
from vit.data.shard_index import INDEX_FILE
from vit.data.shard_pack import pack
from vit.data.shards import TarShards


def _build(root: str | Path, dataset: str = "shards", **fields: object) -> Datasets:
    spec = DataSpec.model_validate({"dataset": dataset, "root": str(root), "augment": False, **fields})
    return build_datasets(spec, image_size=16, seed=0)


def _items(dataset: torch.utils.data.Dataset) -> list[tuple[int, bytes]]:
    """Every (label, image) of a dataset, sorted: equal for two datasets of the same images in any order."""
    return sorted((label, image.numpy().tobytes()) for image, label in dataset)


def _index(root: Path) -> dict:
    return json.loads((root / INDEX_FILE).read_text())


def test_pack_keeps_every_image_label_and_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_photos(tmp_path / "src" / "train", 6)
    write_photos(tmp_path / "src" / "val", 2, seed=1)
    assert main(["pack", str(tmp_path / "src"), str(tmp_path / "shards"), "--shard-size", "4KB"]) == 0
    assert "train: 24 images in" in capsys.readouterr().out
    shards, folder = _build(tmp_path / "shards"), _build(tmp_path / "src", "imagefolder")
    assert shards.class_names == folder.class_names == list(CLASSES)
    assert _items(shards.train) == _items(folder.train) and _items(shards.val) == _items(folder.val)
    index = _index(tmp_path / "shards")
    train = index["splits"]["train"]
    assert len(train) > 3 and sum(shard["count"] for shard in train) == 24
    for shard in train:  # a shard holds at most 4 KB of images, unless one image alone is larger
        assert shard["count"] == 1 or shard["bytes"] <= 4096 + 3 * 1024
    # Written in a seeded order that mixes the classes: the first shards are not all one class.
    first_labels = [label for shard in train[:3] for label in shard["labels"]]
    assert len(set(first_labels)) > 1
    suffixes = {p.suffix for p in (tmp_path / "src").rglob("*.*")}
    assert suffixes == {".jpg", ".png"}


def test_pack_is_reproducible_and_needs_an_empty_directory(tmp_path: Path) -> None:
    write_photos(tmp_path / "src", 5)
    digests = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pack(str(tmp_path / "src"), tmp_path / name, shard_bytes=4096, seed=seed)
        digests.append([shard["sha256"] for shard in _index(tmp_path / name)["splits"]["train"]])
    assert digests[0] == digests[1] and digests[0] != digests[2]
    with pytest.raises(DataError, match=r"a is not empty: pack into a new directory"):
        pack(str(tmp_path / "src"), tmp_path / "a")
    (tmp_path / "src" / "ant" / "9.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*ant/9\.jpg"):
        pack(str(tmp_path / "src"), tmp_path / "d")


def test_pack_reads_torchvision_layouts(tmp_path: Path) -> None:
    _write_fake_pets(tmp_path / "pets")
    pack(str(tmp_path / "pets"), tmp_path / "shards", dataset="pets")
    packed, direct = _build(tmp_path / "shards"), _build(tmp_path / "pets", "pets")
    assert packed.class_names == direct.class_names == ["Abyssinian", "Beagle", "Bengal"]
    assert _items(packed.train) == _items(direct.train) and _items(packed.val) == _items(direct.val)


def test_webdataset_streams_the_shards(tmp_path: Path) -> None:
    root = packed_folder(tmp_path, val=0)
    train = _index(root)["splits"]["train"]
    urls = str(root / f"train-{{000000..{len(train) - 1:06d}}}.tar")
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 24
    assert sorted(int(s["cls"]) for s in samples) == sorted(x for shard in train for x in shard["labels"])
    assert all(("jpg" in s) != ("png" in s) for s in samples)


def test_held_out_split_and_subset_on_shards(tmp_path: Path) -> None:
    root = packed_folder(tmp_path, train=10, val=0)
    data = _build(root, val_fraction=0.2, subset=3)
    assert isinstance(data.train, TarShards) and isinstance(data.val, TarShards)
    assert torch.bincount(data.val.labels).tolist() == [2] * 4
    assert torch.bincount(data.train.labels).tolist() == [3] * 4
    assert not set(data.train.indices.tolist()) & set(data.val.indices.tolist())
    assert _items(data.val) == _items(_build(root, val_fraction=0.2, subset=3).val)  # seeded


def test_shuffled_epochs_read_a_window_of_shards_at_a_time() -> None:
    groups = torch.arange(40).repeat_interleave(25)  # 40 shards of 25 images
    shares = []
    for rank in range(2):
        sampler = ShardedSampler(
            1000, shuffle=True, seed=3, rank=rank, world_size=2, even=True, groups=groups
        )
        sampler.set_epoch(1)
        shares.append(list(sampler))
    assert sorted(shares[0] + shares[1]) == list(range(1000))  # every image once per epoch
    epoch = [i for pair in zip(*shares, strict=True) for i in pair]  # the global order, batch by batch
    # Windows of 16 shards (400 images), the last of the 8 left: each window's images come from its shards alone.
    windows = [set(groups[epoch[start : start + 400]].tolist()) for start in range(0, 1000, 400)]
    assert [len(window) for window in windows] == [16, 16, 8] and len(set.union(*windows)) == 40
    first_window = groups[epoch[:400]]
    assert (
        first_window[:25].unique().numel() > 8
    )  # images of the window's shards are mixed, not shard by shard
    again = ShardedSampler(1000, shuffle=True, seed=3, rank=0, world_size=2, even=True, groups=groups)
    again.set_epoch(1)
    assert list(again) == shares[0]
    again.set_epoch(2)
    assert list(again) != shares[0]


def test_loader_over_shards_resumes_mid_epoch_with_workers(tmp_path: Path) -> None:
    root = packed_folder(tmp_path, val=0)
    train = _build(root).train
    loader = build_loader(train, batch_size=4, shuffle=True, seed=0, drop_last=True, num_workers=1)
    set_epoch(loader, 2)
    full = [(images, labels) for images, labels in loader]
    set_epoch(loader, 2, skip_batches=3)
    rest = list(loader)
    assert len(full) == 5 and len(rest) == 2  # 20 images: 4 of the 24 are held out for validation
    for (images, labels), (want_images, want_labels) in zip(rest, full[3:], strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_http_gives_the_images_the_disk_gives(tmp_path: Path) -> None:
    root = packed_folder(tmp_path)
    local = _build(root)
    with http_server(root) as url:
        remote = _build(url)
        assert remote.class_names == local.class_names
        assert _items(remote.train) == _items(local.train) and _items(remote.val) == _items(local.val)
        with pytest.raises(DataError, match=r"nothing/index.json not found \(HTTP 404\).*index.json"):
            _build(url + "nothing")
    with http_server(root, ranges=False) as url, pytest.raises(DataError, match="ignored a byte-range"):
        _build(url).train[0]


def test_truncated_shard_is_named_at_start_on_read_and_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = packed_folder(tmp_path, val=0)
    shard = root / "train-000001.tar"
    whole = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: whole // 2])
    with pytest.raises(DataError, match=rf"train-000001.tar is {whole // 2} bytes, the index says {whole}"):
        _build(root)
    with http_server(root) as url:  # over HTTP the size is not checked at start: the read names it
        data = _build(url)
        with pytest.raises(DataError, match=r"train-000001\.tar is truncated: member \d{8}\.(jpg|png)"):
            _ = [split[i] for split in (data.train, data.val) for i in range(len(split))]
    capsys.readouterr()
    assert main(["check", str(root)]) == 1
    report = capsys.readouterr().out
    assert f"train-000001.tar: {whole // 2} bytes, packed as {whole}" in report
    assert "missing or cut off" in report and "train-000000.tar" not in report


def test_corrupt_member_is_named_by_check_and_on_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = packed_folder(tmp_path, val=0)
    name, offset, _ = json.loads((root / "train-000002.tar.idx").read_text())[0]
    shard = root / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[offset : offset + 16] = bytes(16)  # the image's header gone, the shard's size unchanged
    shard.write_bytes(bytes(data))
    assert main(["check", str(root)]) == 1
    report = capsys.readouterr().out
    assert "train-000002.tar: content differs from when it was packed (sha256)" in report
    assert f"cannot decode image {root}/train-000002.tar/{name}" in report
    assert main(["check", str(root), "--no-decode"]) == 1
    assert "cannot decode" not in capsys.readouterr().out
    data = _build(root)  # the size is right: the job starts, and the read names the member
    with pytest.raises(DataError, match=rf"cannot decode image .*train-000002\.tar/{name}"):
        _ = [split[i] for split in (data.train, data.val) for i in range(len(split))]


def test_check_passes_intact_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = packed_folder(tmp_path)
    assert main(["check", str(root)]) == 0
    assert re.fullmatch(r"\d+ shards, 32 images, [0-9.]+ MB: ok\n", capsys.readouterr().out)
    assert main(["check", str(tmp_path / "src")]) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "dataset 'shards' reads packed shards: set data.root to the directory or http"),
        ({"root": "s3://bucket/imagenet"}, "shards are read from a directory or an http"),
        ({"root": "/data", "download": True}, "data.download is for the torchvision datasets"),
    ],
)
def test_shard_specs_are_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataSpec.model_validate({"dataset": "shards", **fields})


def test_root_without_an_index_says_what_it_needs(tmp_path: Path) -> None:
    write_photos(tmp_path, 1)
    with pytest.raises(DataError, match=r"index.json is missing: data.root must hold the index.json"):
        _build(tmp_path)
    (tmp_path / INDEX_FILE).write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="is not a vitq-shards index"):
        _build(tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        _build(tmp_path / "nowhere")
