"""What `POST /transfers` reads: a pretrained checkpoint and the datasets to evaluate it on (the paper's transfer
table), expanded into child job specs: a few-shot probe per dataset, and a fine-tune per dataset when asked.

    name: digits-transfer               # optional; default "transfer"
    source: {from_job: 12}              # or {weights: models/ViT-B_16.npz}; + checkpoint, ema (as init takes)
    base:                               # optional: fields every child shares (any JobSpec fields)
      model: {image_size: 32}           # with from_job, over the source job's model; with weights, the model
      resources: {device: cpu}
    datasets:                           # each a data spec, as a job's `data` takes it
      - {dataset: digits}
      - {dataset: imagefolder, root: flowers}
      - {dataset: cifar10, root: cifar10}
    few_shot: [1, 5, 10, 25]            # the probe's shots per class (default); [] for fine-tunes only
    finetune: {train: {steps: 500}, optim: {lr: 0.01}}   # optional: a fine-tune per dataset, over base

A probe is a fine-tune with `train.steps: 0`: the trainer loads the source weights, trains nothing and evaluates
the frozen features with the closed-form few-shot ridge probe (vit.evaluate). The transfer owns each child's
kind, name, init, data and few_shot; base and finetune may not set them. This module is pure: it neither reads
the database nor validates the children (api/core/submit.py does both).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vit.config import MAX_NAME_CHARS, NAME_PATTERN, DataSpec, InitSpec

DEFAULT_SHOTS = [1, 5, 10, 25]  # the paper's few-shot columns
MAX_DATASETS = 25  # two children each: within a sweep's 100 jobs with room to spare
# Set by the transfer for every child: a base or finetune that sets one is refused, naming it.
OWNED = ("kind", "name", "init", "data")
# Sections the transfer merges its own fields into (the source's model, a probe's train.steps and eval.few_shot): a
# base or finetune that gives one as anything but a mapping is refused, as the merge would drop it or fail.
LAYERED = ("model", "train", "eval")
Role = Literal["probe", "finetune"]
_NAME_UNSAFE = re.compile(r"[^\w.\- ]+")  # what a job name may not hold (vit.config.NAME_PATTERN)
FINETUNE_METRIC = "val_top1"  # the fine-tune column: the fine-tuned model's top-1 on the dataset's test split


class TransferSpecError(ValueError):
    """A problem with the transfer itself; `loc` is where in the request body (e.g. ("base", "data"))."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class TransferSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)
    source: InitSpec = Field(description="The pretrained weights: from_job (a vitq job) or weights (a path).")
    base: dict[str, Any] = Field(
        default_factory=dict, description="JobSpec fields every child shares (not kind, name, init, data)."
    )
    datasets: list[DataSpec] = Field(
        min_length=1, max_length=MAX_DATASETS, description="One table row each: a job's data spec."
    )
    few_shot: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: list(DEFAULT_SHOTS),
        max_length=8,
        description="Shots per class of the few-shot probe columns; [] for no probe.",
    )
    finetune: dict[str, Any] | None = Field(
        None, description="JobSpec fields of a fine-tune per dataset, over base; none: probes only."
    )

    @field_validator("few_shot")
    @classmethod
    def _distinct(cls, shots: list[int]) -> list[int]:
        if len(set(shots)) != len(shots):
            raise ValueError("each number of shots once")
        return sorted(shots)

    @model_validator(mode="after")
    def _something_to_measure(self) -> TransferSpec:
        if not self.few_shot and self.finetune is None:
            raise ValueError("nothing to measure: give few_shot shots, a finetune, or both")
        return self

    @property
    def display_name(self) -> str:
        return self.name or "transfer"


@dataclass(frozen=True)
class Column:
    key: str  # the table's column and the child metric it shows
    label: str
    role: Role


@dataclass(frozen=True)
class Child:
    row: int  # index into datasets
    role: Role
    spec: dict[str, Any]  # not yet validated


def columns(transfer: TransferSpec) -> list[Column]:
    cols = [Column(f"few_shot_{n}", f"{n}-shot", "probe") for n in transfer.few_shot]
    if transfer.finetune is not None:
        cols.append(Column(FINETUNE_METRIC, "fine-tune", "finetune"))
    return cols


def labels(transfer: TransferSpec) -> list[str]:
    """Each dataset's row label (and its children's name): the dataset's name, or for an image folder or shards
    the folder's (as a job name may hold it); repeats numbered."""
    seen: dict[str, int] = {}
    out = []
    for data in transfer.datasets:
        label: str = data.dataset
        if data.dataset in ("imagefolder", "shards") and data.root:
            label = _NAME_UNSAFE.sub("-", PurePosixPath(data.root.rstrip("/")).name) or data.dataset
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def children(transfer: TransferSpec, source_model: dict[str, Any] | None = None) -> list[Child]:
    """The child specs, dataset by dataset: its probe (when shots are asked), then its fine-tune (when asked).
    `source_model`: the source job's model section, under base's."""
    check_owned(transfer)
    base = copy.deepcopy(transfer.base)
    if source_model is not None:
        base["model"] = merged(source_model, base.get("model") or {})
    init = transfer.source.model_dump(mode="json", exclude_defaults=True)
    made = []
    for row, (data, label) in enumerate(zip(transfer.datasets, labels(transfer), strict=True)):
        own = {"kind": "finetune", "init": init, "data": data.model_dump(mode="json", exclude_unset=True)}
        name = f"{transfer.display_name} {label}"[: MAX_NAME_CHARS - len(" finetune")]
        if transfer.few_shot:
            probe = {
                **own,
                "name": f"{name} probe",
                "train": {"steps": 0},
                "eval": {"few_shot": transfer.few_shot},
            }
            made.append(Child(row, "probe", merged(base, probe)))
        if transfer.finetune is not None:
            tune = {**own, "name": f"{name} finetune", "eval": {"few_shot": []}}
            made.append(Child(row, "finetune", merged(merged(base, transfer.finetune), tune)))
    tuned = [child.spec.get("train") for child in made if child.role == "finetune"]
    if any(isinstance(train, dict) and train.get("steps") == 0 for train in tuned):
        where = "finetune" if "steps" in (transfer.finetune or {}).get("train", {}) else "base"
        raise TransferSpecError(
            (where, "train", "steps"), "a fine-tune trains at least 1 step (a probe trains 0)"
        )
    return made


def check_owned(transfer: TransferSpec) -> None:
    for part, fields in (("base", transfer.base), ("finetune", transfer.finetune or {})):
        for key in OWNED:
            if key in fields:
                raise TransferSpecError(
                    (part, key),
                    f"{key} is set by the transfer for each child (source, datasets); leave it out",
                )
        for key in LAYERED:
            if key in fields and not isinstance(fields[key], dict):
                raise TransferSpecError((part, key), f"{key} is a mapping of its fields, e.g. {key}: {{...}}")
        if "few_shot" in fields.get("eval", {}):
            raise TransferSpecError(
                (part, "eval", "few_shot"), "the transfer's few_shot sets each probe's shots"
            )


def merged(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`, section by section (a mapping in both is merged; anything else replaced)."""
    out = copy.deepcopy(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
