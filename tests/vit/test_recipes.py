"""Named recipes fill what a spec leaves out, with the papers' values, and show in the resolved spec; the new
fields validate with messages that say what to write."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vit.config import JobSpec
from vit.recipes import RECIPES


def test_a_recipe_fills_unset_fields_and_the_spec_wins_where_it_sets_one() -> None:
    spec = JobSpec.model_validate(
        {
            "kind": "pretrain",
            "recipe": "deit-small",
            "model": {"variant": "S/4", "image_size": 32},  # set: kept
            "data": {"mixup": 0.2},  # set: kept
            "train": {"batch_size": 1024},
        }
    )
    resolved = spec.resolved()
    assert (resolved.model.variant, resolved.model.drop_path_rate) == ("S/4", 0.1)
    data = resolved.data
    assert (data.mixup, data.cutmix, data.random_erasing) == (0.2, 1.0, 0.25)
    assert data.rand_augment == "rand-m9-mstd0.5-inc1"
    assert (resolved.train.label_smoothing, resolved.train.ema_decay) == (0.1, 0.99996)
    # DeiT's lr 5e-4 per 512 images, scaled to the spec's batch; its weight decay, not the kind default's.
    assert resolved.optim.lr == pytest.approx(1e-3)
    assert (resolved.optim.weight_decay, resolved.optim.schedule) == (0.05, "cosine")
    assert resolved.optim.warmup_steps == 100  # left to the kind default: the job's scale
    assert resolved.recipe == "deit-small"
    # Idempotent, and the stored (JSON) form resolves to itself: a job's spec says what it trained with.
    assert resolved.resolved() == resolved
    assert JobSpec.model_validate_json(resolved.model_dump_json()).resolved() == resolved


def test_an_explicit_lr_is_not_scaled_and_variant_comes_from_deit_names() -> None:
    resolved = JobSpec.model_validate({"kind": "pretrain", "recipe": "deit-base", "optim": {"lr": 0.002}})
    assert resolved.resolved().optim.lr == 0.002
    assert resolved.resolved().model.variant == "B/16"


def test_augreg_levels_follow_big_vision() -> None:
    def data(name: str) -> tuple[str | None, float]:
        resolved = JobSpec.model_validate({"kind": "pretrain", "recipe": name}).resolved()
        assert (resolved.optim.lr, resolved.optim.weight_decay, resolved.optim.schedule) == (
            1e-3,
            0.1,
            "cosine",
        )
        return resolved.data.rand_augment, resolved.data.mixup

    assert data("augreg-none") == (None, 0.0)
    assert data("augreg-light1") == ("rand-n2-m0-mmax10", 0.0)
    assert data("augreg-medium2") == ("rand-n2-m15-mmax15", 0.5)
    assert data("augreg-strong2") == ("rand-n2-m20-mmax20", 0.8)


def test_the_finetune_recipe_decays_the_lr_by_layer() -> None:
    resolved = JobSpec.model_validate({"kind": "finetune", "recipe": "mae-finetune"}).resolved()
    assert (resolved.optim.name, resolved.optim.layer_decay) == ("adamw", 0.65)
    assert resolved.optim.lr == pytest.approx(5e-4 * 128 / 256)


def test_without_a_recipe_the_defaults_are_today_s() -> None:
    resolved = JobSpec(kind="pretrain").resolved()
    assert resolved.model.drop_path_rate == 0.0
    assert (resolved.data.mixup, resolved.data.cutmix, resolved.data.random_erasing) == (0.0, 0.0, 0.0)
    assert resolved.data.rand_augment is None and not resolved.data.mixes
    assert (resolved.train.label_smoothing, resolved.train.ema_decay) == (0.0, None)
    assert resolved.optim.layer_decay == 1.0


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"kind": "pretrain", "recipe": "deit"}, ("recipe",), "known: augreg-none"),
        ({"kind": "pretrain", "data": {"rand_augment": "rand-x9"}}, ("data", "rand_augment"), '"rand" then'),
        ({"kind": "pretrain", "data": {"rand_augment": "m9"}}, ("data", "rand_augment"), "timm RandAugment"),
        ({"kind": "pretrain", "data": {"mixup": -1}}, ("data", "mixup"), "greater than or equal to 0"),
        ({"kind": "pretrain", "optim": {"layer_decay": 0}}, ("optim", "layer_decay"), "greater than 0"),
        ({"kind": "pretrain", "train": {"ema_decay": 1}}, ("train", "ema_decay"), "less than 1"),
        (
            {
                "kind": "pretrain",
                "data": {"cutmix": 1.0},
                "train": {"batch_size": 6},
                "resources": {"procs_per_node": 2},
            },
            (),
            "per-process batch 3 must be even",
        ),
        (
            {"kind": "pretrain", "recipe": "deit-tiny", "train": {"batch_size": 33}},
            (),
            "per-process batch 33 must be even",
        ),
    ],
)
def test_bad_fields_say_how_to_fix_them(spec: dict, path: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    error = caught.value.errors()[0]
    assert error["loc"] == path and words in error["msg"], error


def test_every_recipe_resolves_to_a_valid_spec() -> None:
    for name in RECIPES:
        resolved = JobSpec.model_validate({"kind": "pretrain", "recipe": name}).resolved()
        assert JobSpec.model_validate(resolved.model_dump()) == resolved
