"""What `POST /sweeps` reads: a base spec and a grid or random space over its fields, expanded into child specs.

    name: lr-study                      # optional; default: the base spec's name
    base: {kind: pretrain, ...}         # any JobSpec, as POST /jobs takes it
    grid:                               # every combination (the product of the lists) ...
      optim.lr: [3.0e-4, 1.0e-3]
      data.subset: [0.1, 0.3, 1.0]
    random:                             # ... or `samples` draws, each field independently
      samples: 8
      seed: 0
      space:
        optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        optim.warmup_steps: [0, 50, 100]    # a list: one of its values

Fields are dotted paths into the spec (`optim.lr`, `data.augment`, `train.steps`). A path must name a field of
JobSpec; the value set replaces the base's (a whole sub-spec when the path names one, e.g. `data.augment`).
This module is pure: it neither reads the database nor validates the children (api/core/sweeps.py does both).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vit.config import MAX_NAME_CHARS, NAME_PATTERN, JobSpec

# More children than this is a typo in a grid rather than a study (and one transaction holds them all).
MAX_SWEEP_JOBS = 100
# Random draws are rounded to this many significant digits: readable names, no loss for a study.
DRAW_DIGITS = 4
_NAME_UNSAFE = re.compile(r"[^\w.\- ]+")


class SweepSpecError(ValueError):
    """A problem with the sweep itself; `loc` is where in the request body (e.g. ("grid", "optim.lrr"))."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Uniform(_Strict):
    uniform: tuple[float, float]


class LogUniform(_Strict):
    log_uniform: tuple[float, float] = Field(description="Uniform in log space; both bounds > 0.")


Distribution = list[Any] | Uniform | LogUniform


class RandomSpace(_Strict):
    samples: int = Field(ge=1, description=f"How many children to draw (at most {MAX_SWEEP_JOBS}).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    space: dict[str, Distribution] = Field(min_length=1)


class SweepSpec(_Strict):
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)
    base: dict[str, Any] = Field(description="A job spec, as POST /jobs takes it.")
    grid: dict[str, list[Any]] | None = Field(None, min_length=1)
    random: RandomSpace | None = None

    @model_validator(mode="after")
    def _one_space(self) -> SweepSpec:
        if (self.grid is None) == (self.random is None):
            raise ValueError("a sweep needs exactly one of grid or random")
        return self

    @property
    def space_loc(self) -> tuple[str, ...]:
        return ("grid",) if self.grid is not None else ("random", "space")

    @property
    def fields(self) -> list[str]:
        """The swept fields, in the order given."""
        return list(self.grid if self.grid is not None else self.random.space if self.random else {})

    @property
    def display_name(self) -> str:
        return self.name or str(self.base.get("name") or "sweep")


Point = dict[str, Any]  # dotted field -> value of one child


def check_fields(sweep: SweepSpec) -> None:
    """Every swept path names a field of JobSpec, and a grid's lists are not empty; SweepSpecError otherwise.
    Without a name of its own, the sweep takes the base spec's: that one must then follow the job-name rules."""
    base_name = sweep.base.get("name")
    if sweep.name is None and base_name is not None:
        if not isinstance(base_name, str) or not 0 < len(base_name) <= MAX_NAME_CHARS:
            raise SweepSpecError(("base", "name"), f"a name is 1 to {MAX_NAME_CHARS} characters")
        if not re.fullmatch(NAME_PATTERN, base_name):
            raise SweepSpecError(("base", "name"), "a name has letters, digits, spaces and . _ - only")
    for path in sweep.fields:
        loc = (*sweep.space_loc, path)
        problem = _field_problem(path)
        if problem:
            raise SweepSpecError(loc, problem)
        if sweep.grid is not None and not sweep.grid[path]:
            raise SweepSpecError(loc, f"{path}: a grid field needs at least one value")
        if sweep.random is not None:
            _check_distribution(sweep.random.space[path], loc)


def _field_problem(path: str) -> str | None:
    model: type[BaseModel] | None = JobSpec
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if model is None:
            parent = ".".join(parts[:depth])
            return f"unknown spec field {path!r}: {parent} is a value, not a section with fields"
        field = model.model_fields.get(part)
        if field is None:
            known = ", ".join(model.model_fields)
            where = ".".join(parts[:depth]) or "the spec"
            return f"unknown spec field {path!r}: {where} has no field {part!r} (it has {known})"
        model = _section(field.annotation)
    return None


def _section(annotation: Any) -> type[BaseModel] | None:
    """The sub-spec a field holds (ModelSpec, or InitSpec of `InitSpec | None`), None for a value field."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _section(members[0])
    return None


def _check_distribution(distribution: Distribution, loc: tuple[str, ...]) -> None:
    path = loc[-1]
    if isinstance(distribution, list) and not distribution:
        raise SweepSpecError(loc, f"{path}: a list to draw from needs at least one value")
    if isinstance(distribution, Uniform | LogUniform):
        low, high = distribution.uniform if isinstance(distribution, Uniform) else distribution.log_uniform
        if not low <= high:
            raise SweepSpecError(loc, f"{path}: the lower bound {low} is above the upper bound {high}")
        if isinstance(distribution, LogUniform) and low <= 0:
            raise SweepSpecError(loc, f"{path}: log_uniform bounds must be > 0, got {low}")


def count_children(sweep: SweepSpec) -> int:
    if sweep.grid is not None:
        return math.prod(len(values) for values in sweep.grid.values())
    assert sweep.random is not None
    return sweep.random.samples


def points(sweep: SweepSpec) -> list[Point]:
    """The children's field values: the grid's product in order (the last field varies fastest), or the random
    draws (the same for the same seed)."""
    check_fields(sweep)
    count = count_children(sweep)
    if count > MAX_SWEEP_JOBS:
        raise SweepSpecError(
            sweep.space_loc[:1], f"the sweep makes {count} jobs; at most {MAX_SWEEP_JOBS} are allowed"
        )
    if sweep.grid is not None:
        fields, lists = list(sweep.grid), list(sweep.grid.values())
        return [dict(zip(fields, values, strict=True)) for values in itertools.product(*lists)]
    assert sweep.random is not None
    rng = random.Random(sweep.random.seed)
    space = sweep.random.space
    drawn = [{path: _draw(space[path], rng) for path in space} for _ in range(sweep.random.samples)]
    for point in drawn:
        for path, value in point.items():
            if isinstance(value, float) and not math.isfinite(value):  # bounds as wide as 1e308 overflow
                raise SweepSpecError((*sweep.space_loc, path), f"{path}: drew {value}; narrow the bounds")
    return drawn


def _draw(distribution: Distribution, rng: random.Random) -> Any:
    if isinstance(distribution, list):
        return copy.deepcopy(rng.choice(distribution))
    if isinstance(distribution, Uniform):
        value = rng.uniform(*distribution.uniform)
    else:
        low, high = distribution.log_uniform
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{value:.{DRAW_DIGITS}g}")


def child_spec(sweep: SweepSpec, point: Point) -> dict[str, Any]:
    """The base spec with the point's values set, and a name that says them (not yet validated)."""
    spec = copy.deepcopy(sweep.base)
    for path, value in point.items():
        *sections, leaf = path.split(".")
        node = spec
        for depth, section in enumerate(sections):
            if node.get(section) is None:
                node[section] = {}
            node = node[section]
            if not isinstance(node, dict):
                where = ".".join(sections[: depth + 1])
                raise SweepSpecError(
                    ("base", *sections[: depth + 1]), f"{where} must be a mapping to set {path}"
                )
        node[leaf] = copy.deepcopy(value)
    spec["name"] = child_name(sweep.display_name, point)
    return spec


def child_name(name: str, point: Point) -> str:
    """E.g. "lr-study lr-0.001 subset-0.1": the sweep's name and each field's last part with its value."""
    parts = [f"{path.rsplit('.', 1)[-1]}-{_short(value)}" for path, value in point.items()]
    return _NAME_UNSAFE.sub("_", " ".join([name, *parts]))[:128].strip() or "sweep"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "_".join(f"{k}-{_short(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "_".join(_short(v) for v in value)
    return str(value)


def value_at(spec: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a (resolved) spec; None where a section is absent."""
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
