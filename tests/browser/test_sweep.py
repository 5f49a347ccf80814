"""The sweep pages against the real service: the list of sweeps, a sweep's jobs ranked by a chosen metric, the
metric plotted against the swept field, its comparison link, and cancelling a sweep from its page."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from api.client import VitqClient
from tests.api.cli.service import Service, tiny_spec, wait_for
from tests.browser.conftest import horizontal_overflow, stroke_pixels

pytestmark = pytest.mark.browser
BLUE = (37, 99, 235)  # the first line's colour, #2563eb


def sweep_spec(name: str, *, steps: int, rates: list[float]) -> dict[str, Any]:
    base = yaml.safe_load(tiny_spec(name, steps=steps))
    return {"name": name, "base": base, "grid": {"optim.lr": rates}}


@pytest.fixture(scope="module")
def finished_sweep(client: VitqClient) -> dict[str, Any]:
    sweep = client.sweep(sweep_spec("lr-sweep", steps=20, rates=[0.0003, 0.003]))
    for child in sweep["jobs"]:
        wait_for(
            partial(lambda job_id: client.get(job_id)["status"] == "succeeded", child["job"]["id"]),
            timeout=300,
        )
    return sweep


def ranked_ids(page: Page) -> list[int]:
    return [
        int(i)
        for i in page.locator("table.ranking tbody tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    ]


def test_sweep_ranks_its_jobs_by_the_chosen_metric_and_plots_it(
    page: Page, service: Service, client: VitqClient, finished_sweep: dict[str, Any]
) -> None:
    sweep_id = finished_sweep["id"]
    jobs = [client.get(c["job"]["id"]) for c in finished_sweep["jobs"]]
    page.goto(f"{service.url}/#/sweeps")
    page.locator(f"tr[data-sweep-id='{sweep_id}'] a").click()
    page.wait_for_url(f"**/#/sweeps/{sweep_id}")
    page.locator("#view[data-loaded=true]").wait_for()

    by_top1 = sorted(jobs, key=lambda j: -j["best_val_top1"])
    expect(page.locator("table.ranking tbody tr")).to_have_count(2)
    assert ranked_ids(page) == [j["id"] for j in by_top1]
    expect(page.locator("table.ranking tbody tr").first.locator("td[data-col=metric]")).to_have_text(
        f"{by_top1[0]['best_val_top1'] * 100:.2f}%"
    )
    # The parallel coordinates' metric axis in percent too (it read 0.291 beside the table's 29.05%).
    metric_ticks = page.locator("svg.parallel-coords .axis").last.locator(".tick:not(.muted)")
    expect(metric_ticks.first).to_have_text(re.compile(r"^\d+(\.\d+)?%$"))
    page.get_by_label("metric").select_option(label="final train loss")  # lower is better
    by_loss = sorted(jobs, key=lambda j: j["latest_metrics"]["loss"])
    expect(page.locator("table.ranking thead")).to_contain_text("final train loss")
    assert ranked_ids(page) == [j["id"] for j in by_loss]
    expect(page.locator(".sweep-plot-title")).to_have_text("final train loss against optim.lr")
    assert stroke_pixels(page, "sweep", BLUE) > 30  # two points and the line between them
    assert horizontal_overflow(page) == 0

    # On a phone the ranking scrolls inside its box, says so, and shows the metric without scrolling.
    page.set_viewport_size({"width": 390, "height": 900})
    box = page.locator(".table-scroll", has=page.locator("table.ranking"))
    if box.evaluate("b => b.scrollWidth > b.clientWidth"):
        expect(page.locator(".scroll-hint")).to_be_visible()
    metric = page.locator("table.ranking tbody tr").first.locator("td[data-col=metric]")
    assert metric.evaluate("c => c.getBoundingClientRect().right") <= box.evaluate(
        "b => b.getBoundingClientRect().right"
    )
    assert horizontal_overflow(page) == 0
    page.set_viewport_size({"width": 1400, "height": 1000})

    page.get_by_role("link", name="Compare all").click()
    page.wait_for_url(f"**/#/compare?ids={','.join(str(c['job']['id']) for c in finished_sweep['jobs'])}")
    page.locator("#view[data-loaded=true]").wait_for()


def test_cancelling_a_sweep_from_its_page_cancels_its_jobs(
    page: Page, service: Service, client: VitqClient
) -> None:
    sweep = client.sweep(sweep_spec("long-sweep", steps=100_000, rates=[0.001, 0.002]))
    page.goto(f"{service.url}/#/sweeps/{sweep['id']}")
    page.locator("#view[data-loaded=true]").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel sweep").click()
    for child in sweep["jobs"]:
        wait_for(
            partial(lambda job_id: client.get(job_id)["status"] == "cancelled", child["job"]["id"]),
            timeout=120,
        )
    expect(page.get_by_role("button", name="Cancel sweep")).to_be_hidden(timeout=15_000)
