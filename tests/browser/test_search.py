"""A searching sweep against the real service (`vitq serve`: one real worker, real training): children asked for
one at a time as the previous ends, a child the pruner stops early ends `pruned` within one evaluation with its
checkpoint and last metrics, and a fine-tune starts from it; then the sweep's page: parallel coordinates, the
pruned children apart, which fields mattered; and the New job form submitting a sweep."""

from __future__ import annotations

import itertools
import re
from functools import partial
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from api.client import VitqClient
from tests.api.cli.service import Service, tiny_spec, wait_for
from tests.browser.conftest import ARTIFACTS, horizontal_overflow

pytestmark = pytest.mark.browser
EVAL_EVERY = 200
STEPS = 1000


def search_body() -> dict[str, Any]:
    base = yaml.safe_load(tiny_spec("lr-search", steps=STEPS))
    # Metrics, evaluations and checkpoints every 200 steps: a child is judged at 200, 400 and 800.
    every = {"eval_every": EVAL_EVERY, "checkpoint_every": EVAL_EVERY, "log_every": EVAL_EVERY}
    base["train"] = {**base["train"], **every}
    # The pruner judges the logged learning rate, lower taken as better: it follows optim.lr at every step
    # (warmup 5, then linear decay), so which child is poor is known without waiting for a model to learn. The
    # grid's order comes from its seed: 0.001, 0.002, 0.004 (checked below). ASHA with a factor of 2 keeps a
    # child at step 200 only if it is the best so far there: the first runs to the end, the others stop.
    return {
        "name": "lr-search",
        "base": base,
        "method": "grid",
        "space": {"optim.lr": [0.004, 0.002, 0.001]},
        "parallel": 1,
        "metric": {"name": "lr", "goal": "minimize"},
        "early_stop": {"rule": "asha", "min_steps": EVAL_EVERY, "reduction_factor": 2},
    }


def status_of(client: VitqClient, job_id: int) -> str:
    return str(client.get(job_id)["status"])


@pytest.fixture(scope="module")
def ended_search(client: VitqClient) -> dict[str, Any]:
    sweep = client.sweep(search_body())
    assert [c["trial"] for c in sweep["jobs"]] == [0]  # parallel 1: one child at a time
    wait_for(lambda: client.sweep_status(sweep["id"])["ended"], timeout=600)
    return client.sweep_status(sweep["id"])


def test_children_come_one_at_a_time_and_a_poor_one_is_pruned_with_its_checkpoint(
    client: VitqClient, ended_search: dict[str, Any]
) -> None:
    children = ended_search["jobs"]
    assert [c["trial"] for c in children] == [0, 1, 2]
    assert [c["params"]["optim.lr"] for c in children] == [0.001, 0.002, 0.004]
    # Asked for one by one: each child was made after the previous one ended.
    for before, after in itertools.pairwise(children):
        assert after["job"]["created_at"] >= before["job"]["finished_at"]
    assert [c["job"]["status"] for c in children] == ["succeeded", "pruned", "pruned"]
    assert ended_search["status_counts"] == {"succeeded": 1, "pruned": 2}
    assert children[0]["job"]["step"] == STEPS
    pruned = children[1]["job"]
    # Stopped within one evaluation of the rung at step 200, with the metrics it had and a checkpoint to use.
    assert EVAL_EVERY <= pruned["step"] < 2 * EVAL_EVERY, pruned
    assert pruned["error"] is None and pruned["cancelled_by"] is None
    assert {"loss", "lr"} <= set(pruned["latest_metrics"])
    checkpoints = client.checkpoints(pruned["id"])
    assert checkpoints and max(c["step"] for c in checkpoints) == pruned["step"]

    finetune = yaml.safe_load(tiny_spec("from-pruned", steps=4))
    finetune = {**finetune, "kind": "finetune", "init": {"from_job": pruned["id"]}}
    job = client.submit(finetune)
    wait_for(partial(lambda j: status_of(client, j) == "succeeded", job["id"]), timeout=300)


def test_the_sweep_page_shows_parallel_coordinates_the_pruned_apart_and_importance(
    page: Page, service: Service, ended_search: dict[str, Any]
) -> None:
    page.goto(f"{service.url}/#/sweeps/{ended_search['id']}")
    page.locator("#view[data-loaded=true]").wait_for()
    summary = page.locator(".sweep-summary")
    expect(summary).to_contain_text("grid search · lr (minimize) · 3 of 3 jobs · 1 at once")
    expect(summary).to_contain_text("ASHA early stopping from step 200")
    coords = page.locator("svg.parallel-coords")
    expect(coords.locator("path.trial")).to_have_count(3)
    expect(coords.locator("path.trial.pruned")).to_have_count(2)
    expect(coords.locator(".axis-title")).to_have_text(["optim.lr", "final lr"])
    expect(page.locator("svg.scatter[data-field='optim.lr'] circle.trial")).to_have_count(3)
    # The pruned apart, with where they stopped; the ranking holds the one that ran to the end.
    expect(page.locator("table.pruned tbody tr")).to_have_count(2)
    expect(page.locator("table.pruned tbody tr").first).to_contain_text(" of 1000")
    expect(page.locator("table.ranking tbody tr")).to_have_count(1)
    # One child ran to the end: too few to say which field mattered, and the panel says so.
    expect(page.locator(".importance")).to_contain_text("Needs 3 jobs that ran to the end with lr (1 so far)")
    assert horizontal_overflow(page) == 0
    page.set_viewport_size(
        {"width": 390, "height": 844}
    )  # a phone: the views shrink, nothing scrolls sideways
    expect(coords).to_have_attribute("width", re.compile(r"^3\d\d$"))
    assert horizontal_overflow(page) == 0
    page.set_viewport_size({"width": 1400, "height": 1000})
    expect(coords).to_have_attribute("width", re.compile(r"^1\d\d\d$"))
    ARTIFACTS.mkdir(exist_ok=True)  # docs/screenshots/search.png is a copy (the README's picture)
    page.screenshot(path=str(ARTIFACTS / "search.png"), full_page=True)
    coords.locator("path.trial.done").click()
    page.wait_for_url(f"**/#/jobs/{ended_search['jobs'][0]['job']['id']}")


def test_the_new_job_form_submits_a_sweep_and_marks_a_bad_one(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/#/submit")
    page.locator("#view[data-ready=true]").wait_for()
    # It opens with the first example, the data-size sweep: a sweep the form now sends to POST /sweeps.
    expect(page.locator("textarea[name=spec]")).to_have_value(re.compile(r"^base:", re.M))
    base = tiny_spec("form-sweep", steps=2).replace("\n", "\n  ")
    editor = page.locator("textarea[name=spec]")
    editor.fill(f"name: form-sweep\nbase:\n  {base}\ngrid:\n  optim.lrr: [0.001]\n")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("[data-testid=errors] li[data-field='grid.optim.lrr']")).to_contain_text(
        "unknown spec field"
    )
    editor.fill(f"name: form-sweep\nbase:\n  {base}\ngrid:\n  optim.lr: [0.001]\n")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r".*#/sweeps/\d+$"))
    page.locator("#view[data-loaded=true]").wait_for()
    expect(page.locator("table.ranking tbody tr")).to_have_count(1)
