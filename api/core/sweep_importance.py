"""Which swept fields mattered: Optuna's fANOVA importance (Hutter et al. 2014: each field's share of the
variance of a random forest fitted to the results) over a sweep's children that ran to the end.

Any sweep, searching or not: the children's values and results are put into an in-memory study, so a grid
gets the same measure as a TPE search. Pruned children are left out (their results are from fewer steps), and
so is a field that took one value only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from api.core.schemas import ParamImportance, SweepChild, SweepImportance

MIN_JOBS = 3  # fewer results than this say nothing about importance
METHOD = "fANOVA (Optuna), over the children that succeeded"


def importance(children: Sequence[SweepChild], fields: Sequence[str], metric: str) -> SweepImportance:
    done = [
        (c.params, value)
        for c in children
        if c.job.status == "succeeded" and (value := _value(c, metric)) is not None and math.isfinite(value)
    ]
    result = SweepImportance(metric=metric, jobs=len(done), method=METHOD, items=[])
    spaces = {f: _distribution([params[f] for params, _ in done]) for f in fields}
    varied = {f: d for f, d in spaces.items() if d is not None}
    if len(done) < MIN_JOBS or not varied or len({value for _, value in done}) < 2:
        return result
    study = optuna.create_study()  # in memory; the direction does not matter to importance
    for params, value in done:
        study.add_trial(
            optuna.trial.create_trial(
                params={f: _encode(params[f], d) for f, d in varied.items()},
                distributions=varied,
                value=value,
            )
        )
    scores = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=True
    )
    result.items = [ParamImportance(field=f, importance=float(v)) for f, v in scores.items()]
    return result


def _value(child: SweepChild, metric: str) -> float | None:
    if metric == "best_val_top1":
        return child.job.best_val_top1
    value = child.job.latest_metrics.get(metric)
    return None if value is None else float(value)


def _distribution(values: list[Any]) -> BaseDistribution | None:
    """Numbers on their range (log when they span a factor of 8 or more, as learning rates do), anything else
    as categories; None for a single value."""
    if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        low, high = float(min(values)), float(max(values))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 8)
    return CategoricalDistribution(sorted({json.dumps(v, sort_keys=True) for v in values}))


def _encode(value: Any, distribution: BaseDistribution) -> Any:
    return float(value) if isinstance(distribution, FloatDistribution) else json.dumps(value, sort_keys=True)
