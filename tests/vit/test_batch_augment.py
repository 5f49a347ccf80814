"""The batch augmentation (one grid_sample per batch, any device) against torchvision's per-image path: the same
random draw applied both ways gives the same pixels; the draw itself follows RandomResizedCrop's rules."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vit.config import AugmentSpec
from vit.data.batch_augment import CropDraw, draw_crops, resized_crops

ONE_LEVEL = 1 / 127.5  # one uint8 step in [-1, 1]


def per_image(images: torch.Tensor, draw: CropDraw, size: int, *, in_float: bool = False) -> torch.Tensor:
    """The per-image path of vit.data.transforms.train_transform, its random parameters taken from `draw`.
    in_float: resize the image as float32 and round (torchvision resizes uint8 in fixed point, rounding a little
    differently)."""
    to_unit = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    out = []
    for i, image in enumerate(images):
        box = (int(draw.top[i]), int(draw.left[i]), int(draw.height[i]), int(draw.width[i]))
        source = image.expand(3, -1, -1)
        crop = TF.resized_crop(
            source.float() if in_float else source, *box, size=[size, size], antialias=True
        )
        if in_float:
            crop = crop.round().to(torch.uint8)
        out.append(to_unit(TF.horizontal_flip(crop) if bool(draw.flip[i]) else crop))
    return torch.stack(out)


@pytest.mark.parametrize(("channels", "stored", "size"), [(3, 16, 16), (1, 24, 24), (3, 32, 48)])
def test_batch_crops_equal_the_per_image_crops_of_the_same_draw(
    channels: int, stored: int, size: int
) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, channels, stored, stored), dtype=torch.uint8, generator=generator)
    draw = draw_crops(
        64,
        stored,
        stored,
        AugmentSpec(crop_scale=(0.05, 1.0), flip=True),
        device=torch.device("cpu"),
        generator=generator,
    )
    assert 0 < int(draw.flip.sum()) < 64  # both orientations are exercised
    batch = resized_crops(images, draw, size)
    expected = per_image(images, draw, size)
    assert batch.shape == expected.shape == (64, 3, size, size)
    # The training path's uint8 resize rounds in fixed point: at most one level apart.
    assert float((batch - expected).abs().max()) <= ONE_LEVEL + 1e-6
    # The same resize in float, rounded: the same pixels but for a few values within float32 error of a half
    # level, that round the other way (the grid's coordinates are normalized, then mapped back).
    in_float = (batch - per_image(images, draw, size, in_float=True)).abs()
    assert float(in_float.max()) <= ONE_LEVEL + 1e-6
    assert float((in_float > 1e-6).double().mean()) < 0.01


def test_a_whole_image_draw_of_an_image_at_its_size_is_the_image() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    pixels = resized_crops(images, CropDraw.whole(4, 16, 16, torch.device("cpu")), 16)
    torch.testing.assert_close(pixels, images.float().sub(127.5).div(127.5), rtol=0, atol=0)


def test_draws_follow_random_resized_crop_rules() -> None:
    augmentation = AugmentSpec(crop_scale=(0.5, 1.0), flip=False)
    draw = draw_crops(10_000, 32, 32, augmentation, device=torch.device("cpu"))
    area = (draw.height * draw.width).double() / (32 * 32)
    # Rounding the sides to whole pixels moves the area a little past the range's ends.
    assert float(area.min()) >= 0.45 and float(area.max()) <= 1.0
    ratio = draw.width.double() / draw.height.double()
    assert float(ratio.min()) >= 0.65 and float(ratio.max()) <= 1.5
    assert bool((draw.top >= 0).all() and (draw.top + draw.height <= 32).all())
    assert bool((draw.left >= 0).all() and (draw.left + draw.width <= 32).all())
    assert not bool(draw.flip.any())
    # Offsets cover their range: both edges are reached, not only the centre.
    assert int(draw.left.min()) == 0 and int((draw.left + draw.width).max()) == 32
    # The same share of boxes as torchvision's own sampler finds is the whole image (a smoke check of the law).
    torchvision_full = sum(
        v2.RandomResizedCrop.get_params(torch.empty(3, 32, 32), [0.5, 1.0], [3 / 4, 4 / 3]) == (0, 0, 32, 32)
        for _ in range(4000)
    )
    full = float(((draw.height == 32) & (draw.width == 32)).double().mean())
    assert full == pytest.approx(torchvision_full / 4000, abs=0.02)
