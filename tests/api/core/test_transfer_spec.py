"""api/core/transfer_spec.py alone: row labels and how a child's spec is layered (base, the source's model,
finetune, the transfer's own fields)."""

from __future__ import annotations

from api.core.transfer_spec import TransferSpec, children, labels
from vit.config import JobSpec


def test_labels_name_folders_and_number_repeats() -> None:
    transfer = TransferSpec.model_validate(
        {
            "source": {"weights": "w.npz"},
            "datasets": [
                {"dataset": "digits"},
                {"dataset": "imagefolder", "root": "/data/my+flowers/"},
                {"dataset": "digits", "subset": 5},
                {"dataset": "cifar10", "root": "/data/cifar"},
            ],
        }
    )
    assert labels(transfer) == ["digits", "my-flowers", "digits-2", "cifar10"]
    # Every child's name is a valid job name.
    assert all(JobSpec.model_validate(child.spec).name for child in children(transfer))


def test_a_childs_spec_is_base_then_the_source_model_then_finetune_then_its_own() -> None:
    transfer = TransferSpec.model_validate(
        {
            "source": {"from_job": 7, "checkpoint": "step-000100"},
            "base": {"model": {"image_size": 32}, "train": {"batch_size": 64, "steps": 5}},
            "datasets": [{"dataset": "digits", "augment": False}],
            "few_shot": [10, 1],
            "finetune": {"train": {"steps": 300}, "optim": {"lr": 0.03}},
        }
    )
    probe, tune = children(transfer, {"variant": "S/16", "image_size": 224, "depth": None})
    assert probe.spec["model"] == tune.spec["model"] == {"variant": "S/16", "image_size": 32, "depth": None}
    assert probe.spec["train"] == {"batch_size": 64, "steps": 0}
    assert probe.spec["eval"] == {"few_shot": [1, 10]}
    assert tune.spec["train"] == {"batch_size": 64, "steps": 300} and tune.spec["optim"] == {"lr": 0.03}
    assert tune.spec["eval"] == {"few_shot": []}
    for child in (probe, tune):
        assert child.spec["init"] == {"from_job": 7, "checkpoint": "step-000100"}
        assert child.spec["data"] == {"dataset": "digits", "augment": False}
        assert child.row == 0
    assert transfer.base == {
        "model": {"image_size": 32},
        "train": {"batch_size": 64, "steps": 5},
    }  # not mutated
