"""Comparing runs in the dashboard: the list's columns, sorting, search and tick boxes; the comparison view; the
chart tools (every logged series, log scale, smoothing, synced cursors, readable numbers, PNG and CSV downloads);
every screen at 390 and 1920 px. Two tiny real jobs that differ in learning rate, trained by the real service."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from functools import partial

import pytest
from playwright.sync_api import Browser, Page, expect

from api.client import VitqClient
from tests.api.cli.service import Service, tiny_spec, wait_for
from tests.browser.conftest import ARTIFACTS, horizontal_overflow, stroke_pixels

pytestmark = pytest.mark.browser
BLUE = (37, 99, 235)  # the first job's colour (and a single job's first metric), #2563eb
RED = (220, 38, 38)  # the second job's, #dc2626
FAINT = (60, 100)  # the opacity of the raw curve behind a smoothed one (#RRGGBB59: 89 of 255)
LEARNING_RATES = ("0.001", "0.003")


def succeeded(client: VitqClient, job_id: int) -> bool:
    status = client.get(job_id)["status"]
    assert status in ("queued", "running", "succeeded"), f"job {job_id} is {status}"
    return status == "succeeded"


@pytest.fixture(scope="module")
def two_jobs(client: VitqClient) -> list[int]:
    ids = []
    for lr in LEARNING_RATES:
        spec = tiny_spec(f"cmp-lr-{lr}", steps=30).replace("optim: {", f"optim: {{lr: {lr}, ")
        ids.append(client.submit(spec)["id"])
    for job_id in ids:
        wait_for(partial(succeeded, client, job_id), timeout=300)
    return ids


def row_ids(page: Page) -> list[int]:
    return [
        int(i)
        for i in page.locator("table.jobs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    ]


def test_list_shows_hyper_parameters_sorts_searches_and_opens_a_comparison(
    page: Page, service: Service, two_jobs: list[int]
) -> None:
    low, high = two_jobs
    page.goto(f"{service.url}/")
    row = page.locator(f"tr[data-job-id='{high}']")
    expect(row.locator("td[data-col=lr]")).to_have_text("0.003")
    for column, text in [
        ("variant", "Ti/4"),
        ("image", "16px"),
        ("batch", "32"),
        ("steps", "30"),
        ("dataset", "synthetic"),
        ("subset", "all"),
    ]:
        expect(row.locator(f"td[data-col={column}]")).to_have_text(text)
    expect(row.locator("td[data-col=val]")).to_have_text(re.compile(r"^\d+\.\d%$"))
    expect(row.locator("td[data-col=fewshot]")).to_have_text(re.compile(r"^5-shot \d+\.\d%$"))

    lr_header = page.locator("th[data-col=lr]")
    lr_header.click()
    expect(lr_header).to_have_attribute("aria-sort", "descending")
    assert row_ids(page)[:2] == [high, low]
    lr_header.click()
    expect(lr_header).to_have_attribute("aria-sort", "ascending")
    assert row_ids(page)[:2] == [low, high]
    assert "sort=lr" in page.url and "dir=asc" in page.url

    page.get_by_role("searchbox", name="search").fill("lr-0.003")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    expect(row).to_have_count(1)
    assert "q=lr-0.003" in page.url
    page.get_by_role("searchbox", name="search").fill("")
    expect(page.locator(f"tr[data-job-id='{low}']")).to_have_count(1)

    compare = page.get_by_role("button", name=re.compile("^Compare"))
    expect(compare).to_be_disabled()
    page.get_by_label(f"select job {high}").check()
    page.get_by_label(f"select job {low}").check()
    expect(compare).to_have_text("Compare (2)")
    compare.click()
    page.wait_for_url(f"**/#/compare?ids={low},{high}")
    page.locator("#view[data-loaded=true]").wait_for()


def test_comparison_overlays_the_jobs_and_lists_only_differing_fields(
    page: Page, service: Service, two_jobs: list[int]
) -> None:
    low, high = two_jobs
    page.goto(f"{service.url}/#/compare?ids={low},{high}")  # a shared link: the URL alone is the selection
    page.locator("#view[data-loaded=true]").wait_for()
    expect(page.locator("tr[data-field='optim.lr'] td")).to_have_text(list(LEARNING_RATES))
    expect(page.locator("tr[data-field]")).to_have_count(1)  # only lr differs (names are in the header)
    expect(page.locator("table.diff th[data-job-id]")).to_have_text(
        [f"#{low} cmp-lr-0.001", f"#{high} cmp-lr-0.003"]
    )

    loss = page.locator('[data-chart="Loss"]')
    expect(loss.locator(".u-legend")).to_contain_text(f"#{low} cmp-lr-0.001 · train")
    expect(loss.locator(".u-legend")).to_contain_text(f"#{high} cmp-lr-0.003 · val")
    assert stroke_pixels(page, "Loss", BLUE) > 50 and stroke_pixels(page, "Loss", RED) > 50
    for panel in ("Validation top-1", "Learning rate", "Few-shot accuracy", "Gradient norm", "Epoch"):
        assert stroke_pixels(page, panel, RED) > 20, panel

    page.goto(f"{service.url}/#/compare?ids={low},{high},999999")  # a link to a job since deleted, or a typo
    page.locator("#view[data-loaded=true]").wait_for()
    expect(page.locator("#view > p").first).to_have_text("Not found: #999999.")
    expect(page.locator("table.diff th[data-job-id]")).to_have_count(2)

    for axis in ("images seen", "train time"):
        page.get_by_label("x axis").select_option(label=axis)
        expect(loss.locator(".u-legend .u-series").first).to_contain_text(axis)
        assert stroke_pixels(page, "Loss", BLUE) > 50 and stroke_pixels(page, "Loss", RED) > 50, axis


def legend_values(page: Page, chart: str) -> list[str]:
    """The live legend's readings of a chart's visible entries: the x value first."""
    return page.locator(
        f'[data-chart="{chart}"] .u-legend .u-series:not([hidden]) .u-value'
    ).all_inner_texts()


def test_job_charts_read_well_move_together_and_have_log_scale_and_smoothing(
    page: Page, service: Service, two_jobs: list[int]
) -> None:
    job_id = two_jobs[0]
    page.goto(f"{service.url}/#/jobs/{job_id}")
    page.locator("#view[data-metrics-loaded=true]").wait_for()
    for panel in ("loss", "val_top1", "lr", "images_per_s", "grad_norm", "epoch", "few_shot"):
        expect(page.locator(f"[data-panel={panel}] canvas")).to_have_count(1)

    # One cursor for all panels: hovering the loss chart reads the same step in the learning-rate chart.
    plot = page.locator('[data-chart="Loss"] .u-over')
    box = plot.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    step, train_loss, _ = legend_values(page, "Loss")
    assert re.fullmatch(r"\d+", step)
    assert legend_values(page, "Learning rate")[0] == step
    assert re.fullmatch(r"\d\.\d{1,4}", train_loss), train_loss  # 5 significant digits at most, not 17

    readings = page.evaluate(
        """async () => {
          const f = await import("/static/js/format.js");
          return [f.tick(0.925, 0.025, { asPercent: true }), f.tick(0.9, 0.05, { asPercent: true }),
                  f.significant(1.0036273002624512), f.tick(0.00025, 0.00025), f.tick(0.5, 0.25),
                  f.bytes(25276194816), f.bytes(1782579), f.bytes(512),
                  f.bytesTick(1088 * 2 ** 20, 64 * 2 ** 20), f.bytesTick(1152 * 2 ** 20, 64 * 2 ** 20),
                  f.bytesTick(1.25 * 2 ** 30, 2 ** 28)];
        }"""
    )
    # Sizes are powers of 1024 and named so (a 25.3e9-byte host read "23.5 GB" beside a GPU's "80 GiB").
    # Ticks 64 MiB apart are written in MiB: in GiB both would read "1.1 GiB".
    assert readings == [
        *["92.5%", "90%", "1.0036", "2.5e-4", "0.50"],
        *["23.5 GiB", "1.7 MiB", "512 B", "1088 MiB", "1152 MiB", "1.25 GiB"],
    ]

    canvas = page.locator('[data-chart="Loss"] canvas')
    linear = canvas.evaluate("c => c.toDataURL()")
    log_button = page.locator('[data-chart="Loss"]').get_by_role("button", name="log")
    log_button.click()
    expect(log_button).to_have_attribute("aria-pressed", "true")
    assert canvas.evaluate("c => c.toDataURL()") != linear  # redrawn on a log axis
    assert stroke_pixels(page, "Loss", BLUE) > 50

    faint_before = stroke_pixels(page, "Gradient norm", BLUE, alpha=FAINT)
    page.get_by_label("smoothing").evaluate(
        "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); }"
    )
    expect(page.locator(".board-tools output")).to_have_text("0.9")
    assert (
        stroke_pixels(page, "Gradient norm", BLUE, alpha=FAINT) > faint_before + 300
    )  # the raw curve, faint
    assert stroke_pixels(page, "Gradient norm", BLUE) > 50  # the smoothed one on top
    assert len(legend_values(page, "Loss")) == 3  # step, train, val: the raw curves stay out of the legend


def test_a_chart_downloads_as_png_and_csv(
    page: Page, service: Service, client: VitqClient, two_jobs: list[int]
) -> None:
    job_id = two_jobs[0]
    page.goto(f"{service.url}/#/jobs/{job_id}")
    page.locator("#view[data-metrics-loaded=true]").wait_for()
    loss = page.locator('[data-chart="Loss"]')

    with page.expect_download() as png:
        loss.get_by_role("button", name="PNG").click()
    assert png.value.suggested_filename == f"job{job_id}-loss.png"
    path = png.value.path()
    image = path.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 5000

    with page.expect_download() as table:
        loss.get_by_role("button", name="CSV").click()
    assert table.value.suggested_filename == f"job{job_id}-loss.csv"
    rows = list(csv.DictReader(io.StringIO(table.value.path().read_text())))
    series = client.metrics(job_id, names=["loss", "val_loss"])["series"]
    assert len(rows) == len(series["loss"]["steps"]) + len(series["val_loss"]["steps"])
    first_val = next(r for r in rows if r["metric"] == "val_loss")
    assert int(first_val["step"]) == series["val_loss"]["steps"][0]
    assert float(first_val["value"]) == series["val_loss"]["values"][0]  # raw, full precision


@pytest.mark.parametrize("width", [390, 1920])
def test_every_screen_fits_the_window(
    browser: Browser, service: Service, two_jobs: list[int], width: int
) -> None:
    low, high = two_jobs
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    screens = [
        ("list", "#/", "#view[data-loaded=true]"),
        ("job", f"#/jobs/{low}", "#view[data-metrics-loaded=true]"),
        ("compare", f"#/compare?ids={low},{high}", "#view[data-loaded=true]"),
        ("submit", "#/submit", "#view[data-ready=true]"),
    ]
    ARTIFACTS.mkdir(exist_ok=True)  # docs/screenshots/ holds copies of these (the README's pictures)
    for name, route, ready in screens:
        page.goto(f"{service.url}/{route}")
        page.locator(ready).wait_for()
        page.wait_for_timeout(300)  # the charts' resize observers settle
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        assert horizontal_overflow(page) == 0, f"{name} scrolls sideways at {width} px"
        broken = page.locator(".badge").evaluate_all("bs => bs.filter((b) => b.offsetHeight > 24).length")
        assert broken == 0, f"{name}: a status badge wraps onto two lines at {width} px"
        if name in ("job", "compare"):
            columns = page.locator(".charts").first.evaluate(
                "g => getComputedStyle(g).gridTemplateColumns.split(' ').length"
            )
            assert columns == (1 if width == 390 else 3), (name, columns)
            chart_width = page.locator(".chart canvas").first.evaluate("c => c.getBoundingClientRect().width")
            assert chart_width > (300 if width == 390 else 500)
    if width == 390:  # the editor takes the width: there is room to type
        assert page.locator("textarea[name=spec]").evaluate("t => t.getBoundingClientRect().width") > 280
        page.goto(f"{service.url}/#/")
        page.locator("#view[data-loaded=true]").wait_for()
        assert (
            page.locator("table.jobs tbody tr").first.evaluate("r => getComputedStyle(r).display") == "grid"
        )
    context.close()


@pytest.fixture(scope="module")
def running_and_queued(client: VitqClient, two_jobs: list[int]) -> Iterator[list[int]]:
    """A long job running (all images: subset 1.0) and one queued behind it (subset left out); cancelled after.
    After two_jobs: they hold the one worker otherwise."""
    whole = "data: {dataset: synthetic, synthetic_size: 256, num_workers: 0, subset: 1.0}"
    running = client.submit(tiny_spec("long-run", steps=100_000, dataset=whole))["id"]
    queued = client.submit(tiny_spec("waiting-run", steps=100_000))["id"]
    wait_for(lambda: client.get(running)["eta_seconds"] is not None, timeout=120)
    yield [running, queued]
    for job_id in (queued, running):
        client.cancel(job_id)


def right_edge(page: Page, selector: str) -> float:
    return float(page.locator(selector).first.evaluate("e => e.getBoundingClientRect().right"))


def test_a_phone_shows_progress_places_errors_and_why_a_chart_is_empty(
    browser: Browser, service: Service, running_and_queued: list[int]
) -> None:
    running, queued = running_and_queued
    context = browser.new_context(viewport={"width": 390, "height": 900})
    page = context.new_page()
    page.goto(f"{service.url}/#/")
    page.locator("#view[data-loaded=true]").wait_for()
    card = page.locator(f"tr[data-job-id='{running}']")
    expect(card.locator(".bar-label")).to_contain_text("ETA")
    label_right = card.locator(".bar-label").evaluate("e => e.getBoundingClientRect().right")
    assert label_right <= card.evaluate("e => e.getBoundingClientRect().right")  # the ETA is not cut
    # A queued job says where it stands and why, not "0/100000".
    expect(page.locator(f"tr[data-job-id='{queued}'] td[data-col=progress]")).to_contain_text(
        re.compile(r"(#\d+ in queue|queued)")
    )
    expect(card.locator("td[data-col=subset]")).to_have_text("100% of images")  # 1.0, not "1"

    page.goto(f"{service.url}/#/jobs/{running}")
    expect(page.locator(".job-progress .bar-label")).to_contain_text("ETA")
    assert right_edge(page, ".job-progress .bar-label") <= 390
    assert page.locator(".job-progress .bar-label").evaluate("e => e.scrollWidth <= e.clientWidth + 1")

    page.goto(f"{service.url}/#/jobs/{queued}")  # nothing logged yet: a sentence, not empty charts
    expect(page.locator(".no-metrics")).to_contain_text("No metrics yet: the job is queued")
    expect(page.locator(".charts")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "job-queued-390.png"), full_page=True)

    page.goto(f"{service.url}/#/submit")
    page.locator("#view[data-ready=true]").wait_for()
    bad = tiny_spec("bad", steps=10).replace(
        "optim: {", "optim: {schedule: a-schedule-nobody-has-ever-heard-of, "
    )
    page.locator("textarea[name=spec]").fill(bad)
    page.get_by_role("button", name="Submit").click()
    message = page.locator(".mark-msg").first
    expect(message).to_be_visible()
    assert right_edge(page, ".mark-msg") <= right_edge(page, ".editor") + 1  # ends in an ellipsis, inside
    assert message.get_attribute("title")  # the whole message on hover, and in the list below
    errors = page.locator("[data-testid=errors]")
    assert errors.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    page.screenshot(path=str(ARTIFACTS / "submit-error-390.png"), full_page=True)
    assert horizontal_overflow(page) == 0
    context.close()


def test_many_runs_compare_with_readable_legends_table_and_sparse_curves(
    browser: Browser, service: Service, two_jobs: list[int], running_and_queued: list[int]
) -> None:
    ids = sorted([*two_jobs, *running_and_queued])
    context = browser.new_context(viewport={"width": 1920, "height": 1000})
    page = context.new_page()
    page.goto(f"{service.url}/#/compare?ids={','.join(map(str, ids))}")
    expect(page.locator("table.diff th[data-job-id]")).to_have_count(4)
    page.locator('[data-chart="Loss"] .u-legend .line-sample').first.wait_for()
    page.wait_for_function(  # two finished jobs' train and val, the running job's train at least
        "document.querySelectorAll('[data-chart=\"Loss\"] .u-legend .line-sample').length >= 5"
    )
    assert horizontal_overflow(page) == 0
    subset = page.locator("tr[data-field='data.subset'] td")
    expect(subset).to_have_text(["all", "all", "100% of images", "all"])  # never a raw null
    expect(page.locator("table.diff")).not_to_contain_text("null")
    # Train and val differ in the legend as on the canvas: a solid and a dashed sample, not two squares.
    styles = page.locator('[data-chart="Loss"] .u-legend .u-series:not([hidden]) .line-sample').evaluate_all(
        "els => els.map(e => getComputedStyle(e).borderTopStyle)"
    )
    assert {"solid", "dashed"} <= set(styles), styles
    for chart in ("Loss", "Learning rate"):
        legend = page.locator(f'[data-chart="{chart}"] .u-legend').evaluate(
            "e => e.getBoundingClientRect().height"
        )
        plot = page.locator(f'[data-chart="{chart}"] canvas').evaluate(
            "e => e.getBoundingClientRect().height"
        )
        assert legend < plot / 2, (chart, legend, plot)
    expect(page.locator('[data-chart="Loss"]')).to_have_attribute("data-axes", "step | cross-entropy")
    page.screenshot(path=str(ARTIFACTS / "compare-many-1920.png"), full_page=True)

    page.goto(f"{service.url}/#/jobs/{two_jobs[0]}")
    page.locator("#view[data-metrics-loaded=true]").wait_for()
    expect(page.locator("dl.summary div", has_text="Attempt").locator("dd")).to_have_text("1")  # not "1 of 3"
    faint_before = stroke_pixels(page, "Validation top-1", BLUE, alpha=FAINT)  # antialiased edges
    page.get_by_label("smoothing").evaluate(
        "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); }"
    )
    # A few evaluations are drawn as they are: no smoothed line beside a faint raw one.
    assert stroke_pixels(page, "Validation top-1", BLUE, alpha=FAINT) <= faint_before + 20
    assert stroke_pixels(page, "Validation top-1", BLUE) > 20
    assert stroke_pixels(page, "Loss", BLUE, alpha=FAINT) > 50  # a long series still is smoothed

    # The owner tags and annotates the run; a bad tag is refused with its field named; the list shows the tags.
    page.get_by_label("tags").fill("two words")
    page.get_by_role("button", name="Save tags and notes").click()
    expect(page.locator(".job-notes [role=status]")).to_contain_text("tags.0")
    page.get_by_label("tags").fill("baseline, lr-low")
    page.get_by_label("notes").fill("the reference run")
    page.get_by_role("button", name="Save tags and notes").click()
    expect(page.locator(".job-notes [role=status]")).to_have_text("saved")
    page.goto(f"{service.url}/#/")
    expect(page.locator(f"tr[data-job-id='{two_jobs[0]}'] .tag")).to_have_text(["baseline", "lr-low"])
    context.close()
