"""Decoding on the training device (`data.decode: device`, vit.data.device_decode), run on the CPU here: the same
code path a GPU runs, with torchvision's CPU JPEG decoder in place of nvJPEG.

Tolerance: a JPEG decoder may differ from Pillow's by a level or two per pixel (IDCT rounding, chroma
upsampling; nvJPEG against libjpeg-turbo). Pillow and torchvision's CPU decoder both use libjpeg-turbo and agree
exactly here, so the comparisons allow at most 2 uint8 levels per pixel (2 / 127.5 in [-1, 1]) and half a level
on average: enough for another decoder, far below what a wrong crop, flip, channel order or scale would give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchvision.transforms.v2 import functional as TF

from tests.vit.shard_helpers import packed_folder
from vit.config import AUGMENT_PRESETS, DataSpec
from vit.data import DataError, build_datasets
from vit.data.device_batches import build_train_batches
from vit.data.device_decode import DeviceDecodedBatches, EncodedImages, decode_batch, place
from vit.data.loader import set_epoch
from vit.data.shards import TarShards, decode_rgb

LEVEL = 1 / 127.5  # one uint8 level in [-1, 1]
CPU = torch.device("cpu")


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    difference = (got - expected).abs()
    assert difference.max() <= 2 * LEVEL + 1e-6 and difference.mean() <= 0.5 * LEVEL, difference.max()


def _shards(tmp_path: Path, **fields: object) -> TarShards:
    root = packed_folder(tmp_path, train=4, val=0)  # JPEG and PNG images of varied sizes
    spec = DataSpec.model_validate({"dataset": "shards", "root": str(root), **fields})
    train = build_datasets(spec, image_size=16, seed=0).train
    assert isinstance(train, TarShards)
    return train


def _batches(dataset: TarShards, decode: str, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = build_train_batches(
        dataset,
        batch_size=4,
        image_size=16,
        augmentation=None,
        seed=3,
        num_workers=workers,
        rank=0,
        world_size=1,
        device=CPU,
        decode=decode,
    )
    assert isinstance(batches, DeviceDecodedBatches) == (decode == "device")
    set_epoch(batches, 1, skip_batches=1)
    return [(images, labels) for images, labels in batches]


def test_device_batches_equal_the_loader_path_image_for_image(tmp_path: Path) -> None:
    dataset = _shards(tmp_path, augment=False, val_fraction=0.25)  # evaluation resize: nothing random
    on_device = _batches(dataset, "device", workers=1)  # bytes read by a worker process
    loader = _batches(dataset, "loader", workers=0)
    assert len(on_device) == len(loader) == 2  # 12 images in batches of 4, the first skipped
    for (images, labels), (expected_images, expected_labels) in zip(on_device, loader, strict=True):
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert torch.equal(labels, expected_labels)
        _assert_close(images, expected_images)


def test_device_crops_equal_pil_decoding_with_the_same_crops(tmp_path: Path) -> None:
    dataset = _shards(tmp_path)
    encoded = EncodedImages(dataset)
    items = [encoded[i] for i in range(len(encoded))]
    assert {bytes(data[:2].numpy()) for data, _, _ in items} == {b"\xff\xd8", b"\x89P"}  # JPEG and PNG
    photo = AUGMENT_PRESETS["photo"]
    got = place(decode_batch([d for d, _, _ in items], [w for _, _, w in items], CPU), 16, photo, _seeded())
    # The CPU path: Pillow decodes, torchvision's functions crop and flip, the same boxes drawn in the same order.
    generator, expected = _seeded(), []
    for data, _, where in items:
        image = TF.pil_to_tensor(decode_rgb(bytes(data.numpy()), where))
        same = place([image], 16, photo, generator)[0]
        expected.append(same)
    _assert_close(got, torch.stack(expected))
    other = place(decode_batch([d for d, _, _ in items], [""] * len(items), CPU), 16, photo, _seeded(8))
    assert (other - got).abs().mean() > 5 * LEVEL  # other crops give other pixels: the comparison can fail


def _seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_an_undecodable_image_is_named() -> None:
    broken = torch.tensor(
        [0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3], dtype=torch.uint8
    )  # a JPEG's start, then garbage
    with pytest.raises(DataError, match=r"cannot decode image train-000003\.tar/00000042\.jpg"):
        decode_batch([broken], ["train-000003.tar/00000042.jpg"], CPU)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"dataset": "cifar10", "root": "/d"},
            "decode: device reads encoded images of imagefolder or shards",
        ),
        ({"dataset": "imagefolder", "root": "/d", "rand_augment": "rand-m9"}, "cannot run rand_augment"),
    ],
)
def test_device_decode_is_refused_where_it_cannot_run(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DataSpec.model_validate({**fields, "decode": "device"})
