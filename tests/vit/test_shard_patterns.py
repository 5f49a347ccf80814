"""WebDataset shards named by a brace pattern, with no index.json (vit.data.shard_scan): read from disk and over a
real HTTP server, each image once with its label, scanned once and cached; a bad pattern is named."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from tests.vit.shard_helpers import CLASSES, http_server, packed_folder
from tests.vit.test_train import _StopAtStep, final_weights, train_losses
from tests.vit.tiny_specs import TINY_MODEL
from vit.config import DataSpec, JobSpec
from vit.data import DataError, Datasets, build_datasets
from vit.data.pack import main as data_main
from vit.data.shard_scan import CACHE_ENV
from vit.distributed import setup
from vit.train import main
from vit.trainer import Trainer


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _bare(tmp_path: Path, *, names: bool = True) -> tuple[Path, Path]:
    """(pack output, its .tar files alone in tmp_path/bare): WebDataset shards as any tool writes them."""
    packed = packed_folder(tmp_path, train=4, val=0)
    bare = tmp_path / "bare"
    bare.mkdir()
    for shard in packed.glob("train-*.tar"):
        shutil.copy(shard, bare)
    if names:
        (bare / "classes.json").write_text(json.dumps(list(CLASSES)))
    return packed, bare


def _pattern(base: str | Path, bare: Path) -> str:
    last = len(list(bare.glob("train-*.tar"))) - 1
    return f"{str(base).rstrip('/')}/train-{{000000..{last:06d}}}.tar"


def _build(root: str, **fields: object) -> Datasets:
    spec = DataSpec.model_validate({"dataset": "shards", "root": root, "augment": False, **fields})
    return build_datasets(spec, image_size=16, seed=0)


def _items(datasets: Datasets) -> list[tuple[bytes, int]]:
    """Every image (train and val) as its pixels' bytes and label."""
    return [
        ((image * 127.5 + 127.5).round().to(torch.uint8).numpy().tobytes(), label)
        for dataset in (datasets.train, datasets.val)
        for image, label in (dataset[i] for i in range(len(dataset)))
    ]


def test_a_pattern_on_disk_gives_the_images_and_labels_the_pack_index_gives(
    tmp_path: Path, cache: Path
) -> None:
    packed, bare = _bare(tmp_path)
    expected = _build(str(packed), val_fraction=0.25)
    got = _build(_pattern(bare, bare), val_fraction=0.25)
    assert len(list(bare.glob("train-*.tar"))) > 1
    assert got.class_names == expected.class_names == list(CLASSES)
    assert _items(got) == _items(expected)  # the same held-out split too: the labels agree, in the same order
    (index,) = cache.glob("*/index.json")
    scanned = index.stat().st_mtime_ns
    _build(_pattern(bare, bare))
    assert [*cache.glob("*/index.json")] == [index] and index.stat().st_mtime_ns == scanned  # scanned once


def test_a_pattern_over_http_reads_what_the_disk_gives(tmp_path: Path) -> None:
    _, bare = _bare(tmp_path, names=False)
    on_disk = _build(_pattern(bare, bare))
    with http_server(bare) as url:
        over_http = _build(_pattern(url, bare))
        assert _items(over_http) == _items(on_disk)
    assert over_http.class_names == [
        "0",
        "1",
        "2",
        "3",
    ]  # no classes.json beside the shards: the labels' numbers


def test_data_index_scans_a_pattern_ahead_of_a_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bare = _bare(tmp_path)
    assert data_main(["index", _pattern(bare, bare)]) == 0
    assert "16 images of 4 classes in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{bare}/train-{{0..}}.tar", r"train-\{0\.\.\}\.tar' is a malformed shard pattern"),
        ("{bare}/train-{{0..5", "is a malformed shard pattern"),
        ("{bare}/{{a,b}}/train-{{0..1}}.tar", "braces may only be in the file name"),
    ],
)
def test_a_malformed_pattern_is_refused_with_the_spec(tmp_path: Path, pattern: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DataSpec(dataset="shards", root=pattern.format(bare=tmp_path))


def test_a_pattern_naming_missing_shards_or_an_unreachable_host_is_named(tmp_path: Path) -> None:
    _, bare = _bare(tmp_path)
    with pytest.raises(
        DataError, match=r"97 of its 100 shards are missing, the first .*bare/train-000003\.tar"
    ):
        _build(f"{bare}/train-{{000000..000099}}.tar")
    with pytest.raises(DataError, match=r"cannot read http://127\.0\.0\.1:9/ds/train-0\.tar: .*refused"):
        _build("http://127.0.0.1:9/ds/train-{0..3}.tar")  # the discard port: nothing listens
    with (
        http_server(bare) as url,
        pytest.raises(DataError, match=r"cannot read .*/train-000099\.tar: HTTP 404"),
    ):
        _build(f"{url}train-{{000000,000099}}.tar")


def test_a_sample_without_its_label_is_named(tmp_path: Path) -> None:
    _, bare = _bare(tmp_path)
    shard = bare / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for info, data in members[1:]:  # the first sample's .cls goes
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"train-000000\.tar/00000000\.\w+ has no \.cls member"):
        _build(_pattern(bare, bare))


@pytest.mark.parametrize("decode", ["loader", "device"])  # device: vit.data.device_decode, on the CPU here
def test_resume_on_a_pattern_continues_exactly_like_straight_training(tmp_path: Path, decode: str) -> None:
    torch.set_num_threads(1)
    _, bare = _bare(tmp_path)
    spec = {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": {
            "dataset": "shards",
            "root": _pattern(bare, bare),
            "num_workers": 0,
            "val_fraction": 0.25,
            "decode": decode,
        },
        "optim": {"warmup_steps": 2},
        "train": {"steps": 4, "batch_size": 4, "log_every": 1},
        "eval": {"batch_size": 8},
        "resources": {"device": "cpu"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([str(tmp_path / "spec.yaml"), "--out", str(straight)]) == 0
    resumed.mkdir()
    trainer = Trainer(JobSpec.model_validate(spec), resumed, setup("cpu"))
    trainer.restore()
    trainer.stop = _StopAtStep(trainer, 2)  # 12 training images in batches of 4: mid-epoch
    assert trainer.train() is False
    trainer.close()
    assert main([str(tmp_path / "spec.yaml"), "--out", str(resumed)]) == 0
    expected, got = train_losses(straight), train_losses(resumed)
    assert list(got) == list(expected) == list(range(1, 5))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    for key, value in final_weights(straight).items():
        torch.testing.assert_close(final_weights(resumed)[key], value, rtol=0, atol=1e-6)
