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
    method: tpe                         # ... or a search: Optuna asks for each child as earlier ones end
    space: {optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}, optim.warmup_steps: {int_uniform: [0, 100]}}
    max_jobs: 20                        # children in all (grid: the grid's size)
    parallel: 4                         # children queued or running at once
    metric: {name: val_top1, goal: maximize}        # what the search optimizes (its last value)
    early_stop: {rule: asha, min_steps: 50}         # stop poor children early (api/core/search.py)

Fields are dotted paths into the spec (`optim.lr`, `data.augment`, `train.steps`). A path must name a field of
JobSpec; the value set replaces the base's (a whole sub-spec when the path names one, e.g. `data.augment`).
This module is pure: it neither reads the database nor validates the children (api/core/sweeps.py does both).
A search's children are asked for by api/core/search.py; here it is only read and checked.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import types
import typing
from typing import Any, Literal, Union

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


class IntUniform(_Strict):
    int_uniform: tuple[int, int] = Field(description="An integer, uniform between both bounds (included).")


Distribution = list[Any] | Uniform | LogUniform | IntUniform
# The Optuna samplers a search may use (api/core/search.py); grid and random also have the all-at-once forms.
METHODS = ("tpe", "random", "grid", "qmc")
METRIC_NAME = r"^[A-Za-z_][\w.\-]{0,63}$"
DEFAULT_MAX_JOBS = 20
# What vit.train logs (docs/contracts.md, metrics.jsonl), few_shot_N aside: a search's metric is one of these.
LOGGED_METRICS = ("val_top1", "val_loss", "loss", "lr", "grad_norm")
DEFAULT_PARALLEL = 4


class RandomSpace(_Strict):
    samples: int = Field(ge=1, description=f"How many children to draw (at most {MAX_SWEEP_JOBS}).")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    space: dict[str, Distribution] = Field(min_length=1)


class Metric(_Strict):
    name: str = Field("val_top1", pattern=METRIC_NAME, description="A metric the trainer logs.")
    goal: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: minimize a name ending in loss, maximize any other."
    )

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize" if self.goal else not self.name.endswith("loss")


class EarlyStop(_Strict):
    """Stop poor children at their evaluations (Optuna's pruners; a child's evaluations are its reports)."""

    metric: str | None = Field(None, pattern=METRIC_NAME, description="The sweep's metric (the default).")
    rule: Literal["asha", "median", "hyperband"] = Field(
        description="asha: successive halving, asynchronous (Li et al. 2018); median: below the median of the "
        "others at the same step; hyperband: several ASHA brackets."
    )
    min_steps: int = Field(1, ge=1, description="No child is stopped before this many steps.")
    reduction_factor: int = Field(3, ge=2, le=16, description="asha, hyperband: keep 1/this at each rung.")
    startup_jobs: int = Field(5, ge=0, le=MAX_SWEEP_JOBS, description="median: children that finish first.")


class SweepSpec(_Strict):
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS, pattern=NAME_PATTERN)
    base: dict[str, Any] = Field(description="A job spec, as POST /jobs takes it.")
    grid: dict[str, list[Any]] | None = Field(None, min_length=1)
    random: RandomSpace | None = None
    method: Literal["tpe", "random", "grid", "qmc"] | None = Field(
        None, description="A search: Optuna's sampler asks for each child as earlier ones end."
    )
    space: dict[str, Distribution] | None = Field(None, min_length=1, description="A search's fields.")
    max_jobs: int | None = Field(None, ge=1, le=MAX_SWEEP_JOBS, description="A search's children in all.")
    parallel: int | None = Field(None, ge=1, le=MAX_SWEEP_JOBS, description="Children queued or running.")
    metric: Metric | None = None
    early_stop: EarlyStop | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1, description="A search's sampler seed.")

    @model_validator(mode="after")
    def _one_space(self) -> SweepSpec:
        if sum(x is not None for x in (self.grid, self.random, self.method)) != 1:
            raise ValueError("a sweep needs exactly one of grid, random or method (a search)")
        if self.method is None:
            search_only = ("space", "max_jobs", "parallel", "metric", "early_stop")
            given = [key for key in search_only if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only a search (method: ...) takes these")
        elif self.space is None:
            raise ValueError(f"method {self.method} needs a space: the fields to search")
        return self

    @property
    def searching(self) -> bool:
        return self.method is not None

    @property
    def mode(self) -> str:
        return self.method or ("grid" if self.grid is not None else "random")

    @property
    def space_loc(self) -> tuple[str, ...]:
        if self.searching:
            return ("space",)
        return ("grid",) if self.grid is not None else ("random", "space")

    @property
    def fields(self) -> list[str]:
        """The swept fields, in the order given."""
        if self.space is not None:
            return list(self.space)
        return list(self.grid if self.grid is not None else self.random.space if self.random else {})

    @property
    def objective(self) -> Metric:
        """What a search optimizes: `metric`, else early_stop's metric, else val_top1."""
        if self.metric is not None:
            return self.metric
        return Metric(name=self.early_stop.metric) if self.early_stop and self.early_stop.metric else Metric()

    @property
    def budget(self) -> int:
        """A search's children in all: max_jobs, by default DEFAULT_MAX_JOBS (a grid: its size)."""
        if self.max_jobs is not None:
            return self.max_jobs
        return grid_size(self) if self.method == "grid" else DEFAULT_MAX_JOBS

    @property
    def slots(self) -> int:
        """A search's children queued or running at once."""
        return min(self.parallel or DEFAULT_PARALLEL, self.budget)

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
        space = sweep.random.space if sweep.random is not None else sweep.space
        if space is not None:
            _check_distribution(space[path], loc)
        if sweep.method == "grid" and space is not None and not isinstance(space[path], list):
            raise SweepSpecError(loc, f"{path}: method grid takes a list of values for each field")
    if sweep.searching:
        _check_search(sweep)


def _check_search(sweep: SweepSpec) -> None:
    if sweep.method == "grid" and sweep.max_jobs is not None and sweep.max_jobs > grid_size(sweep):
        raise SweepSpecError(("max_jobs",), f"the grid has {grid_size(sweep)} points; max_jobs is more")
    if sweep.budget > MAX_SWEEP_JOBS:
        raise SweepSpecError(
            ("space",), f"the sweep makes {sweep.budget} jobs; at most {MAX_SWEEP_JOBS} are allowed"
        )
    metric = sweep.objective.name
    evals = sweep.base.get("eval")
    shots = evals.get("few_shot") if isinstance(evals, dict) else None
    logged = (*LOGGED_METRICS, *(f"few_shot_{n}" for n in shots or () if isinstance(n, int)))
    if metric not in logged:
        where = ("metric", "name") if sweep.metric is not None else ("early_stop", "metric")
        raise SweepSpecError(where, f"{metric!r} is not a metric the trainer logs here ({', '.join(logged)})")
    stop = sweep.early_stop
    if stop is None:
        return
    if stop.metric is not None and stop.metric != sweep.objective.name:
        raise SweepSpecError(
            ("early_stop", "metric"),
            f"early_stop.metric {stop.metric!r} is not the sweep's metric {sweep.objective.name!r}: children "
            "are stopped by the value the search optimizes",
        )
    train = sweep.base.get("train")
    if not isinstance(train, dict) or not train.get("eval_every"):
        raise SweepSpecError(
            ("base", "train", "eval_every"),
            "early_stop needs train.eval_every > 0: a child is judged at its evaluations",
        )


def grid_size(sweep: SweepSpec) -> int:
    """The number of points of a grid search's space (a product of list lengths; 0 when a field is no list)."""
    space = sweep.space or {}
    return math.prod(len(v) if isinstance(v, list) else 0 for v in space.values())


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
    if isinstance(distribution, Uniform | LogUniform | IntUniform):
        low, high = bounds(distribution)
        if not low <= high:
            raise SweepSpecError(loc, f"{path}: the lower bound {low} is above the upper bound {high}")
        if isinstance(distribution, LogUniform) and low <= 0:
            raise SweepSpecError(loc, f"{path}: log_uniform bounds must be > 0, got {low}")


def bounds(distribution: Uniform | LogUniform | IntUniform) -> tuple[float, float]:
    if isinstance(distribution, Uniform):
        return distribution.uniform
    return distribution.log_uniform if isinstance(distribution, LogUniform) else distribution.int_uniform


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
    if isinstance(distribution, IntUniform):
        return rng.randint(*distribution.int_uniform)
    if isinstance(distribution, Uniform):
        value = rng.uniform(*distribution.uniform)
    else:
        low, high = distribution.log_uniform
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{value:.{DRAW_DIGITS}g}")


def probe_points(sweep: SweepSpec) -> list[Point]:
    """A search's children are asked for later, one by one: at submit, check the children its space can make at
    its edges instead (every value of a list, both bounds of a range; the other fields at their first value), so
    that a value the spec refuses is a 422 now. A grid search checks every point, as a grid does."""
    check_fields(sweep)
    assert sweep.space is not None
    if sweep.method == "grid":
        fields, lists = list(sweep.space), [v for v in sweep.space.values() if isinstance(v, list)]
        return [dict(zip(fields, values, strict=True)) for values in itertools.product(*lists)]
    edges = {path: _edges(distribution) for path, distribution in sweep.space.items()}
    first = {path: values[0] for path, values in edges.items()}
    probes = [first]
    for path, values in edges.items():
        probes += [{**first, path: value} for value in values[1:]]
    return probes


def _edges(distribution: Distribution) -> list[Any]:
    if isinstance(distribution, list):
        return list(distribution)
    return list(bounds(distribution))


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
