"""The spec: defaults by kind from the paper, and clear errors for bad input."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from vit.config import JobSpec, parse_spec_text


def test_pretrain_defaults_follow_the_paper() -> None:
    optim = JobSpec(kind="pretrain").resolved().optim
    assert optim.name == "adamw"
    assert optim.betas == (0.9, 0.999)
    assert optim.weight_decay == 0.1
    assert optim.schedule == "linear"


def test_finetune_defaults_follow_the_paper() -> None:
    optim = JobSpec(kind="finetune").resolved().optim
    assert optim.name == "sgd"
    assert optim.momentum == 0.9
    assert optim.weight_decay == 0.0
    assert optim.clip_grad_norm == 1.0
    assert optim.schedule == "cosine"
    assert optim.betas is None


def test_every_default_can_be_overridden_and_resolving_is_idempotent() -> None:
    spec = JobSpec.model_validate({"kind": "finetune", "optim": {"lr": 0.003, "schedule": "linear"}})
    resolved = spec.resolved()
    assert (resolved.optim.lr, resolved.optim.schedule, resolved.optim.name) == (0.003, "linear", "sgd")
    assert resolved.resolved() == resolved


def test_yaml_and_json_parse_the_same() -> None:
    yaml_spec = parse_spec_text("kind: pretrain\nmodel: {variant: Ti/4, image_size: 32}\n")
    json_spec = parse_spec_text('{"kind": "pretrain", "model": {"variant": "Ti/4", "image_size": 32}}')
    assert yaml_spec == json_spec


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"kind": "pretrain", "optim": {"lr": -1}}, ("optim", "lr"), "greater than 0"),
        ({"kind": "pretrain", "optim": {"lerning_rate": 1}}, ("optim", "lerning_rate"), "Extra inputs"),
        ({"kind": "pretrain", "model": {"variant": "X/16"}}, ("model", "variant"), 'look like "B/16"'),
        ({"kind": "pretrain", "model": {"variant": "B/16", "image_size": 100}}, ("model",), "multiple"),
        (
            {"kind": "pretrain", "model": {"variant": "B/16", "num_heads": 5}},
            ("model",),
            "768 is not divisible",
        ),
        ({"kind": "pretrain", "model": {"variant": "Ti/4", "embed_dim": 100}}, ("model",), "by num_heads 3"),
        ({"kind": "pretrain", "data": {"dataset": "cifar10"}}, ("data",), "data.root"),
        ({"kind": "pretrain", "init": {"weights": "w.npz"}}, (), "finetune"),
        ({"kind": "finetune", "init": {}}, ("init",), "exactly one"),
        (
            {"kind": "pretrain", "train": {"batch_size": 10}, "resources": {"procs_per_node": 4}},
            (),
            "divisible",
        ),
    ],
)
def test_bad_specs_name_the_field_and_the_problem(spec: dict, path: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    error = caught.value.errors()[0]
    assert tuple(str(part) for part in error["loc"]) == path
    assert words in error["msg"]


def test_a_spec_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        parse_spec_text("- just\n- a list\n")


@pytest.mark.parametrize(
    ("augment", "words"),
    [
        ("fotos", "a preset (photo, light, symbol, none)"),
        ({"crop_scale": [0.3, 1.2], "flip": False}, "0 < min <= max <= 1"),
        ({"crop_scale": [0.3, 1.0]}, "flip: Field required"),
        ({"crop": 0.5, "flip": True}, "crop: Extra inputs"),
        (3, "got 3"),
    ],
)
def test_bad_augment_is_one_clear_error(augment: object, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"kind": "pretrain", "data": {"augment": augment}})
    [error] = caught.value.errors()
    assert error["loc"] == ("data", "augment") and words in error["msg"], error["msg"]


def test_augment_round_trips_through_yaml() -> None:
    spec = parse_spec_text("kind: pretrain\ndata: {augment: {crop_scale: [0.3, 1], flip: false}}\n")
    assert parse_spec_text(yaml.safe_dump(spec.model_dump(mode="json"))) == spec
    assert parse_spec_text("kind: pretrain\ndata: {augment: light}\n").data.augment == "light"
