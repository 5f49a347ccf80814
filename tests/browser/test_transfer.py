"""The transfer pages against the real service: the list, and a transfer's table (rows = datasets, columns = the
k-shot probes and the fine-tune, the mean last) with the children's stored values, readable at 1920 px and at
390 px (the metrics scroll sideways under a visible hint, the dataset column stays)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from api.client import VitqClient
from tests.api.cli.service import Service, tiny_spec, wait_for
from tests.browser.conftest import horizontal_overflow

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def finished_transfer(client: VitqClient) -> dict[str, Any]:
    pretrain = client.submit(yaml.safe_load(tiny_spec("transfer-source", steps=10)))
    transfer = client.transfer(
        {
            "name": "page",
            "source": {"from_job": pretrain["id"]},
            "base": {"train": {"batch_size": 32}, "resources": {"device": "cpu"}},
            "datasets": [{"dataset": "digits"}, {"dataset": "synthetic", "synthetic_size": 256}],
            "few_shot": [1, 5, 10, 25, 50],  # wide enough to scroll on a phone
            "finetune": {"train": {"steps": 4}},
        }
    )
    return wait_for(lambda: (t := client.transfer_status(transfer["id"]))["finished"] and t, timeout=300)


def cell_texts(page: Page, dataset: str) -> list[str]:
    return page.locator(f"table.transfer-table tr[data-dataset='{dataset}'] td").all_inner_texts()


def test_the_table_shows_the_childrens_values_and_the_mean(
    page: Page, service: Service, finished_transfer: dict[str, Any]
) -> None:
    transfer_id = finished_transfer["id"]
    assert finished_transfer["status_counts"] == {"succeeded": 4}
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.goto(f"{service.url}/#/transfers")
    page.get_by_role("link", name="Transfers").first.click()
    source_job = finished_transfer["spec"]["source"]["from_job"]
    row = page.locator(f"tr[data-transfer-id='{transfer_id}']")
    expect(row.locator("td[data-label=Source] a")).to_have_attribute("href", f"#/jobs/{source_job}")
    row.locator("td[data-col=name] a").click()
    page.wait_for_url(f"**/#/transfers/{transfer_id}")
    page.locator("#view[data-loaded=true]").wait_for()
    # The source is a link to the pretrain it evaluates (it was plain text).
    expect(page.locator(".transfer-source a")).to_have_attribute("href", f"#/jobs/{source_job}")

    table = finished_transfer["table"]
    labels = page.locator("table.transfer-table thead th").all_inner_texts()
    assert labels == ["Dataset", "1-shot", "5-shot", "10-shot", "25-shot", "50-shot", "fine-tune"]
    for row in [*table["rows"], {"dataset": "mean", "values": table["mean"]}]:
        shown = cell_texts(page, row["dataset"])
        assert shown == [f"{row['values'][c['key']] * 100:.1f}" for c in table["columns"]], row["dataset"]
    expect(page.locator("table.transfer-table tbody tr")).to_have_count(2)
    assert horizontal_overflow(page) == 0
    assert page.locator(".scroll-hint").first.is_hidden()  # everything fits at 1920 px
    expect(page.get_by_role("link", name="CSV")).to_have_attribute(
        "href", f"/transfers/{transfer_id}/table.csv"
    )


def test_on_a_phone_the_metrics_scroll_under_a_hint(
    page: Page, service: Service, finished_transfer: dict[str, Any]
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{service.url}/#/transfers/{finished_transfer['id']}")
    page.locator("#view[data-loaded=true]").wait_for()
    assert horizontal_overflow(page) == 0  # the table scrolls in its box, not the page
    expect(page.locator(".scroll-hint").first).to_be_visible()
    box = page.locator("[data-table=transfer]")
    first = page.locator("table.transfer-table tbody th").first
    before = first.bounding_box()
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
    after = first.bounding_box()
    assert before is not None and after is not None and abs(after["x"] - before["x"]) < 1  # stays in view
    expect(page.locator("table.transfer-table td[data-key=val_top1]").first).to_be_in_viewport()
