"""POST /sweeps (grid and random spaces, validated, children made all or none), GET /sweeps, GET /sweeps/{id},
POST /sweeps/{id}/cancel."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import insert, update

from api.core.models import Job, JobStatus, MetricPoint, Sweep, utcnow
from api.core.sweep_spec import MAX_SWEEP_JOBS
from tests.api.conftest import TINY_SPEC, Api


def post_sweep(api: Api, sweep: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = api.client.post("/sweeps", json=sweep)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_sweep_count(api: Api) -> int:
    with api.session() as session:
        return session.query(Sweep).count()


def test_a_grid_makes_one_queued_job_per_combination(api: Api) -> None:
    sweep = post_sweep(
        api,
        {
            "name": "lr-study",
            "base": TINY_SPEC,
            "grid": {"optim.lr": [3e-4, 1e-3], "data.subset": [0.1, 0.3, 1.0]},
        },
    )
    assert (sweep["mode"], sweep["fields"], sweep["job_count"]) == ("grid", ["optim.lr", "data.subset"], 6)
    assert sweep["status_counts"] == {"queued": 6}
    children = sweep["jobs"]
    # The product in order, the last field varying fastest; each value is in the child's resolved spec.
    expected = [{"optim.lr": lr, "data.subset": subset} for lr in (3e-4, 1e-3) for subset in (0.1, 0.3, 1.0)]
    assert [child["params"] for child in children] == expected
    assert [child["job"]["spec"]["optim"]["lr"] for child in children] == [3e-4] * 3 + [1e-3] * 3
    assert children[1]["job"]["name"] == "lr-study lr-0.0003 subset-0.3"
    # The base's own fields are kept, and each child is resolved like a POST /jobs job.
    assert all(child["job"]["spec"]["train"]["steps"] == 40 for child in children)
    assert all(child["job"]["spec"]["optim"]["name"] == "adamw" for child in children)
    # Every child was enqueued once, after the commit.
    assert api.sent_job_ids() == [child["job"]["id"] for child in children]
    with api.session() as session:
        assert {job.sweep_id for job in session.query(Job)} == {sweep["id"]}

    shown = api.client.get(f"/sweeps/{sweep['id']}").json()
    assert [c["job"]["id"] for c in shown["jobs"]] == [c["job"]["id"] for c in children]
    listed = api.client.get("/sweeps").json()
    assert listed["total"] == 1 and listed["items"][0]["job_count"] == 6
    assert "jobs" not in listed["items"][0]


def test_yaml_body_and_the_base_name_by_default(api: Api) -> None:
    body = yaml.safe_dump({"base": TINY_SPEC, "grid": {"train.steps": [10, 20]}})
    response = api.client.post("/sweeps", content=body, headers={"content-type": "application/yaml"})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["name"] == "tiny"
    assert [c["job"]["total_steps"] for c in sweep["jobs"]] == [10, 20]
    assert [c["job"]["name"] for c in sweep["jobs"]] == ["tiny steps-10", "tiny steps-20"]


def test_a_whole_section_can_be_swept(api: Api) -> None:
    augment = [{"crop_scale": [0.5, 1.0], "flip": False}, "none"]
    sweep = post_sweep(api, {"base": TINY_SPEC, "grid": {"data.augment": augment}})
    assert [c["params"]["data.augment"] for c in sweep["jobs"]] == augment


def test_random_draws_are_in_range_and_repeatable(api: Api) -> None:
    space = {
        "optim.lr": {"log_uniform": [1e-4, 1e-2]},
        "train.batch_size": [16, 32],
        "optim.weight_decay": {"uniform": [0.0, 0.3]},
    }
    first = post_sweep(api, {"base": TINY_SPEC, "random": {"samples": 12, "seed": 7, "space": space}})
    again = post_sweep(api, {"base": TINY_SPEC, "random": {"samples": 12, "seed": 7, "space": space}})
    other = post_sweep(api, {"base": TINY_SPEC, "random": {"samples": 12, "seed": 8, "space": space}})
    params = [c["params"] for c in first["jobs"]]
    assert first["mode"] == "random" and len(params) == 12
    assert params == [c["params"] for c in again["jobs"]]
    assert params != [c["params"] for c in other["jobs"]]
    assert all(1e-4 <= p["optim.lr"] <= 1e-2 and 0.0 <= p["optim.weight_decay"] <= 0.3 for p in params)
    assert {p["train.batch_size"] for p in params} == {16, 32}
    # Log-uniform: as many draws below the geometric middle (1e-3) as above, roughly; uniform would put ~90 % above.
    below = sum(p["optim.lr"] < 1e-3 for p in params)
    assert 2 <= below <= 10


@pytest.mark.parametrize(
    ("space", "loc", "words"),
    [
        ({"optim.lrr": [1e-3]}, ["body", "grid", "optim.lrr"], "unknown spec field 'optim.lrr'"),
        ({"optimizer.lr": [1e-3]}, ["body", "grid", "optimizer.lr"], "the spec has no field 'optimizer'"),
        ({"optim.lr.max": [1e-3]}, ["body", "grid", "optim.lr.max"], "optim.lr is a value"),
        ({"optim.lr": []}, ["body", "grid", "optim.lr"], "at least one value"),
    ],
)
def test_a_bad_field_is_a_422_naming_it(api: Api, space: dict[str, Any], loc: list[str], words: str) -> None:
    detail = post_sweep(api, {"base": TINY_SPEC, "grid": space}, status=422)["detail"]
    assert detail[0]["loc"] == loc and words in detail[0]["msg"], detail
    assert (api.stored_job_count(), stored_sweep_count(api), api.sent_job_ids()) == (0, 0, [])


def test_an_unknown_field_in_a_random_space_is_named_too(api: Api) -> None:
    random = {"samples": 2, "space": {"train.stepz": [1, 2]}}
    detail = post_sweep(api, {"base": TINY_SPEC, "random": random}, status=422)["detail"]
    assert detail[0]["loc"] == ["body", "random", "space", "train.stepz"]


def test_too_many_combinations_is_a_422(api: Api) -> None:
    side = math.isqrt(MAX_SWEEP_JOBS) + 1  # side² > the limit
    grid = {"optim.lr": [1e-3 + i * 1e-5 for i in range(side)], "train.steps": list(range(1, side + 1))}
    detail = post_sweep(api, {"base": TINY_SPEC, "grid": grid}, status=422)["detail"]
    assert detail[0]["loc"] == ["body", "grid"]
    assert f"makes {side * side} jobs; at most {MAX_SWEEP_JOBS}" in detail[0]["msg"]
    random = {"samples": MAX_SWEEP_JOBS + 1, "space": {"optim.lr": [1e-3]}}
    assert post_sweep(api, {"base": TINY_SPEC, "random": random}, status=422)["detail"][0]["loc"] == [
        "body",
        "random",
    ]
    assert api.stored_job_count() == 0


def test_one_invalid_child_stores_nothing(api: Api) -> None:
    # lr 20 is above JobSpec's bound: the third child fails, and neither the sweep nor the first two are kept.
    grid = {"optim.lr": [1e-3, 1e-2, 20.0]}
    detail = post_sweep(api, {"base": TINY_SPEC, "grid": grid}, status=422)["detail"]
    assert detail[0]["loc"] == ["body", "grid", "optim.lr"]
    assert detail[0]["msg"].startswith("job 3 of 3 (optim.lr=20.0): ")
    assert (api.stored_job_count(), stored_sweep_count(api), api.sent_job_ids()) == (0, 0, [])


def test_a_bad_base_spec_is_placed_on_the_base(api: Api) -> None:
    base = {**TINY_SPEC, "train": {"steps": 40, "batch_size": 32, "stepz": 1}}
    detail = post_sweep(api, {"base": base, "grid": {"optim.lr": [1e-3]}}, status=422)["detail"]
    assert detail[0]["loc"] == ["body", "base", "train", "stepz"]


def test_children_are_checked_like_jobs(api: Api) -> None:
    # A child naming a parent that does not exist is refused at once, as POST /jobs refuses it.
    finetune = {"kind": "finetune", "model": TINY_SPEC["model"], "train": TINY_SPEC["train"]}
    parent = api.client.post("/jobs", json=TINY_SPEC).json()["id"]
    grid = {"init.from_job": [parent, parent + 1000]}
    detail = post_sweep(api, {"base": finetune, "grid": grid}, status=422)["detail"]
    assert detail[0]["loc"] == ["body", "grid", "init.from_job"] and "does not exist" in detail[0]["msg"]
    assert api.stored_job_count() == 1  # only the parent
    # Both children of a valid sweep wait for the queued parent instead of being enqueued.
    api.sent_job_ids()
    sweep = post_sweep(api, {"base": finetune, "grid": {"init.from_job": [parent], "optim.lr": [0.01, 0.03]}})
    assert [c["job"]["wait_reason"] for c in sweep["jobs"]] == [f"waiting for job {parent} to succeed"] * 2
    assert api.sent_job_ids() == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"base": TINY_SPEC}, "exactly one of grid, random or method"),
        (
            {
                "base": TINY_SPEC,
                "grid": {"optim.lr": [1e-3]},
                "random": {"samples": 1, "space": {"optim.lr": [1e-3]}},
            },
            "exactly one",
        ),
        ({"base": TINY_SPEC, "grid": {"optim.lr": [1e-3]}, "extra": 1}, "Extra inputs"),
        (
            {"base": TINY_SPEC, "random": {"samples": 2, "space": {"optim.lr": {"log_uniform": [0.0, 1.0]}}}},
            "> 0",
        ),
    ],
)
def test_malformed_sweeps_are_422(api: Api, body: dict[str, Any], words: str) -> None:
    detail = post_sweep(api, body, status=422)["detail"]
    assert words in str(detail), detail


@pytest.mark.parametrize(
    ("sweep_name", "base_name", "loc"),
    [
        (None, "x" * 5000, ["body", "base", "name"]),  # the sweep takes the base's name: the same rules
        (None, "lr <script>", ["body", "base", "name"]),
        (None, "study\n", ["body", "base", "name"]),
        (None, 42, ["body", "base", "name"]),
        ("x" * 129, "tiny", ["body", "name"]),
        ("a/b", "tiny", ["body", "name"]),
    ],
)
def test_sweep_names_follow_the_job_name_rules(
    api: Api, sweep_name: str | None, base_name: Any, loc: list[str]
) -> None:
    body = {"base": {**TINY_SPEC, "name": base_name}, "grid": {"optim.lr": [1e-3]}}
    detail = post_sweep(api, body if sweep_name is None else {**body, "name": sweep_name}, status=422)[
        "detail"
    ]
    assert detail[0]["loc"] == loc, detail
    assert stored_sweep_count(api) == 0
    assert api.stored_job_count() == 0


def test_show_reports_each_childs_metrics_and_the_best(api: Api) -> None:
    sweep = post_sweep(api, {"base": TINY_SPEC, "grid": {"optim.lr": [1e-3, 3e-3]}})
    first, second = (c["job"]["id"] for c in sweep["jobs"])
    rows = [
        (first, "val_top1", 0.4),
        (first, "val_top1", 0.6),
        (second, "val_top1", 0.8),
        (second, "few_shot_5", 0.5),
    ]
    with api.session() as session:
        # Metrics come from a started attempt (a job that never started shows none).
        session.execute(
            update(Job)
            .where(Job.id.in_([first, second]))
            .values(status=JobStatus.running, started_at=utcnow())
        )
        session.execute(
            insert(MetricPoint),
            [
                {"job_id": j, "name": n, "step": i, "value": v, "time": 0.0}
                for i, (j, n, v) in enumerate(rows)
            ],
        )
        session.commit()
    shown = api.client.get(f"/sweeps/{sweep['id']}").json()
    assert [c["job"]["best_val_top1"] for c in shown["jobs"]] == [0.6, 0.8]
    assert shown["jobs"][1]["job"]["latest_metrics"]["few_shot_5"] == 0.5
    assert shown["best_val_top1"] == 0.8
    assert api.client.get("/sweeps").json()["items"][0]["best_val_top1"] == 0.8


def test_cancel_cancels_every_unfinished_child(api: Api) -> None:
    sweep = post_sweep(api, {"base": TINY_SPEC, "grid": {"optim.lr": [1e-3, 2e-3, 3e-3, 4e-3]}})
    done, running, *queued = (c["job"]["id"] for c in sweep["jobs"])
    with api.session() as session:
        session.execute(update(Job).where(Job.id == done).values(status=JobStatus.succeeded))
        session.execute(update(Job).where(Job.id == running).values(status=JobStatus.running))
        session.commit()
    response = api.client.post(f"/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 202, response.text
    by_id = {c["job"]["id"]: c["job"] for c in response.json()["jobs"]}
    assert by_id[done]["status"] == "succeeded"  # finished: left alone
    assert (by_id[running]["status"], by_id[running]["cancel_requested"]) == ("running", True)
    assert [by_id[j]["status"] for j in queued] == ["cancelled", "cancelled"]
    assert response.json()["status_counts"] == {"succeeded": 1, "running": 1, "cancelled": 2}
    # Again: nothing left to cancel is not an error.
    assert api.client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 202


def test_unknown_sweep_is_404(api: Api) -> None:
    assert api.client.get("/sweeps/12345").status_code == 404
    assert api.client.post("/sweeps/12345/cancel").status_code == 404
    assert api.client.get(f"/sweeps/{2**64}").status_code == 422
    assert api.client.get(f"/sweeps/{2**31}").status_code == 422  # beyond the 32-bit id column


def test_the_data_size_example_makes_one_pretrain_per_subset(api: Api) -> None:
    text = (Path(__file__).resolve().parents[3] / "examples" / "digits-data-size-sweep.yaml").read_text()
    response = api.client.post("/sweeps", content=text, headers={"content-type": "application/yaml"})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert [c["params"] for c in sweep["jobs"]] == [{"data.subset": s} for s in (0.1, 0.3, 1.0)]
    assert all(c["job"]["kind"] == "pretrain" and c["job"]["spec"]["eval"]["few_shot"] for c in sweep["jobs"])


SEARCH = {
    "name": "lr-search",
    "base": {**TINY_SPEC, "train": {"steps": 40, "batch_size": 32, "eval_every": 10}},
    "method": "tpe",
    "space": {"optim.lr": {"log_uniform": [1e-4, 1e-2]}, "optim.warmup_steps": [0, 10]},
    "max_jobs": 6,
    "parallel": 2,
    "early_stop": {"metric": "val_top1", "rule": "asha", "min_steps": 10},
}


def test_a_search_stores_the_sweep_and_asks_for_parallel_children(api: Api) -> None:
    sweep = post_sweep(api, SEARCH)
    assert (sweep["mode"], sweep["searching"], sweep["max_jobs"], sweep["parallel"]) == ("tpe", True, 6, 2)
    assert (sweep["metric"], sweep["goal"], sweep["ended"]) == ("val_top1", "maximize", False)
    assert [c["trial"] for c in sweep["jobs"]] == [0, 1]
    assert [c["job"]["status"] for c in sweep["jobs"]] == ["queued", "queued"]
    assert api.sent_job_ids() == [c["job"]["id"] for c in sweep["jobs"]]
    for child in sweep["jobs"]:
        assert 1e-4 <= child["params"]["optim.lr"] <= 1e-2 and child["params"]["optim.warmup_steps"] in (
            0,
            10,
        )
        assert child["job"]["name"].startswith("lr-search lr-")
    listed = api.client.get("/sweeps").json()["items"][0]
    assert (listed["mode"], listed["job_count"]) == ("tpe", 2)


@pytest.mark.parametrize(
    ("changes", "loc", "words"),
    [
        (
            {"space": {"optim.lr": {"log_uniform": [1e-4, 20.0]}}},
            ["body", "space", "optim.lr"],
            "a child at the space's edge (optim.lr=20.0): ",
        ),
        ({"space": {"optim.lrr": [1e-3]}}, ["body", "space", "optim.lrr"], "unknown spec field"),
        ({"space": None}, ["body"], "needs a space"),
        ({"method": "bayes"}, ["body", "method"], "'tpe', 'random', 'grid' or 'qmc'"),
        ({"metric": {"name": "val_top"}}, ["body", "metric", "name"], "not a metric the trainer logs here"),
        ({"parallel": 0}, ["body", "parallel"], "greater than or equal to 1"),
        ({"max_jobs": MAX_SWEEP_JOBS + 1}, ["body", "max_jobs"], "less than or equal"),
        (
            {"metric": {"name": "val_top1"}, "early_stop": {"rule": "asha", "metric": "val_loss"}},
            ["body", "early_stop", "metric"],
            "not the sweep's metric",
        ),
        (
            {"early_stop": {"rule": "halving"}},
            ["body", "early_stop", "rule"],
            "'asha', 'median' or 'hyperband'",
        ),
        ({"base": TINY_SPEC}, ["body", "base", "train", "eval_every"], "needs train.eval_every"),
        (
            {"method": "grid", "space": {"optim.lr": {"uniform": [0.1, 0.2]}}},
            ["body", "space", "optim.lr"],
            "takes a list",
        ),
        (
            {"method": "grid", "space": {"optim.lr": [1e-3, 2e-3]}, "max_jobs": 3},
            ["body", "max_jobs"],
            "2 points",
        ),
    ],
)
def test_a_bad_search_is_a_422_naming_the_field_and_stores_nothing(
    api: Api, changes: dict[str, Any], loc: list[str], words: str
) -> None:
    body = {k: v for k, v in {**SEARCH, **changes}.items() if v is not None}
    detail = post_sweep(api, body, status=422)["detail"]
    assert detail[0]["loc"] == loc and words in detail[0]["msg"], detail
    assert (api.stored_job_count(), stored_sweep_count(api), api.sent_job_ids()) == (0, 0, [])


def test_search_fields_are_refused_on_a_grid(api: Api) -> None:
    body = {"base": TINY_SPEC, "grid": {"optim.lr": [1e-3]}, "parallel": 2}
    assert "only a search" in str(post_sweep(api, body, status=422)["detail"])


def test_cancelling_a_search_stops_its_asking(api: Api) -> None:
    sweep = post_sweep(api, SEARCH)
    cancelled = api.client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["status_counts"] == {"cancelled": 2}
    with api.session() as session:
        assert session.get(Sweep, sweep["id"]).cancelled_at is not None  # type: ignore[union-attr]


def test_importance_names_the_field_that_mattered(api: Api) -> None:
    # A 3 x 3 grid where val_top1 follows lr alone: lr takes (nearly) all the importance, warmup none.
    grid = {"optim.lr": [1e-4, 1e-3, 1e-2], "optim.warmup_steps": [0, 5, 10]}
    sweep = post_sweep(api, {"base": TINY_SPEC, "grid": grid})
    rows = []
    for child in sweep["jobs"]:
        top1 = {1e-4: 0.3, 1e-3: 0.6, 1e-2: 0.9}[child["params"]["optim.lr"]] + child["params"][
            "optim.warmup_steps"
        ] * 1e-4
        rows.append(
            {"job_id": child["job"]["id"], "name": "val_top1", "step": 40, "value": top1, "time": 0.0}
        )
    with api.session() as session:
        session.execute(insert(MetricPoint), rows)
        session.execute(update(Job).values(status=JobStatus.succeeded, started_at=utcnow()))
        session.commit()
    found = api.client.get(f"/sweeps/{sweep['id']}/importance", params={"metric": "val_top1"}).json()
    assert (found["metric"], found["jobs"]) == ("val_top1", 9)
    assert [i["field"] for i in found["items"]] == ["optim.lr", "optim.warmup_steps"]
    assert found["items"][0]["importance"] > 0.9
    assert math.isclose(sum(i["importance"] for i in found["items"]), 1.0)
    # Pruned children are left out; too few results say nothing.
    with api.session() as session:
        session.execute(
            update(Job).where(Job.id != sweep["jobs"][0]["job"]["id"]).values(status=JobStatus.pruned)
        )
        session.commit()
    few = api.client.get(f"/sweeps/{sweep['id']}/importance").json()
    assert (few["jobs"], few["items"]) == (1, [])
    assert api.client.get(f"/sweeps/{sweep['id']}/importance", params={"metric": "a b"}).status_code == 422
