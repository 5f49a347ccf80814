"""The dashboard in headless Chromium against the real embedded service (real worker, tiny real training)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from api.client import VitqClient
from tests.api.cli.service import Service, tiny_spec, wait_for
from tests.browser.conftest import ARTIFACTS, horizontal_overflow, stroke_pixels

pytestmark = pytest.mark.browser
TRAINING_TIMEOUT_MS = 120_000
LOSS_COLOR = (37, 99, 235)  # the train-loss stroke, #2563eb


def submit_through_form(page: Page, spec: str) -> None:
    page.locator("#view[data-ready=true]").wait_for()
    page.locator("textarea[name=spec]").fill(spec)
    page.get_by_role("button", name="Submit").click()


def loss_pixels(page: Page) -> int:
    """How many pixels of the loss chart's canvas have the train-loss stroke colour."""
    return int(
        page.evaluate(
            """([r, g, b]) => {
              const canvas = document.querySelector('[data-chart="Loss"] canvas');
              const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
              let count = 0;
              for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40 && Math.abs(data[i + 2] - b) < 40 && data[i + 3] > 128) count++;
              }
              return count;
            }""",
            list(LOSS_COLOR),
        )
    )


@pytest.fixture(scope="module")
def pretrained_job(service: Service, browser: Browser) -> int:
    """A job submitted through the page and watched on its page until it succeeded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{service.url}/#/submit")
    submit_through_form(page, tiny_spec("browser-pretrain", steps=40))
    page.wait_for_url("**/#/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#view")).to_have_attribute("data-status", "succeeded", timeout=TRAINING_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "job_succeeded.png"), full_page=True)
    context.close()
    return job_id


def test_submitted_job_succeeds_with_drawn_curves(
    page: Page, service: Service, client: VitqClient, pretrained_job: int
) -> None:
    page.goto(f"{service.url}/#/jobs/{pretrained_job}")
    expect(page.locator(".badge")).to_have_text("succeeded")
    expect(page.locator(".job-progress .bar-label")).to_have_text("40/40")
    page.locator("#view[data-metrics-loaded=true]").wait_for()
    assert loss_pixels(page) > 50
    # A checkpoint downloads through fetch (so that an API token can go with it) and is saved whole.
    with page.expect_download() as saved:
        page.locator("table.small a", has_text="download").first.click()
    (first,) = [
        c
        for c in client.checkpoints(pretrained_job)
        if saved.value.suggested_filename.endswith(f"{c['name']}.safetensors")
    ]
    assert saved.value.suggested_filename == f"job{pretrained_job}-{first['name']}.safetensors"
    assert saved.value.path().stat().st_size == first["size_bytes"]
    expect(page.get_by_role("cell", name="1-shot")).to_be_visible()
    expect(page.locator("pre.spec")).to_contain_text("embed_dim: 32")
    # MFU against a stated peak and how it was found (the worker's calibration, still running when this first
    # job started, or the trainer's own measurement), never above it.
    mfu = page.locator("dl.summary div", has_text="MFU").locator("dd")
    expect(mfu).to_have_text(
        re.compile(r"^\d+\.\d% of [\d.]+ TFLOP/s(calibrated by the worker|measured by the)")
    )
    assert 0 < float(mfu.inner_text().split("%")[0]) <= 100


def test_job_list_shows_and_filters_jobs(page: Page, service: Service, pretrained_job: int) -> None:
    page.goto(f"{service.url}/")
    row = page.locator(f"tr[data-job-id='{pretrained_job}']")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row).to_contain_text("40/40")
    page.get_by_role("button", name="failed", exact=True).click()
    expect(row).to_have_count(0)
    expect(page.locator(".empty")).to_contain_text("No jobs match")
    page.get_by_role("button", name="succeeded", exact=True).click()
    expect(row).to_have_count(1)
    assert "status=succeeded" in page.url
    row.click()
    page.wait_for_url(f"**/#/jobs/{pretrained_job}")


def test_validation_error_is_shown_next_to_its_field(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/#/submit")
    submit_through_form(
        page, "kind: pretrain\nname: bad-lr\nmodel: {variant: Ti/4, image_size: 16}\noptim:\n  lr: -1\n"
    )
    error = page.locator(".errors li[data-field='optim.lr']")
    expect(error).to_contain_text("greater than 0")
    mark = page.locator(".mark-msg[data-field='optim.lr']")
    expect(mark).to_contain_text("greater than 0")
    # The inline message sits on line 5 (`  lr: -1`), and that line number is flagged in the gutter.
    assert mark.evaluate("el => el.style.top") == f"{8 + 4 * 20}px"
    expect(page.locator(".gutter div.bad")).to_have_text("5")
    assert page.url.endswith("#/submit")


def test_bad_variant_is_marked_on_its_own_line(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/#/submit")
    submit_through_form(
        page, "kind: pretrain\nname: bad-variant\nmodel:\n  variant: X/16\n  image_size: 16\n"
    )
    mark = page.locator(".mark-msg[data-field='model.variant']")
    expect(mark).to_contain_text('must look like "B/16"')
    assert mark.evaluate("el => el.style.top") == f"{8 + 3 * 20}px"  # line 4, `  variant: X/16`, not `model:`
    expect(page.locator(".gutter div.bad")).to_have_text("4")


def test_yaml_syntax_error_is_marked_on_its_line(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/#/submit")
    submit_through_form(page, "kind: pretrain\nname: broken\ntrain:\n  steps: 10\n   batch_size: 4\n")
    expect(page.locator(".errors li[data-field=syntax]")).to_contain_text("invalid YAML at line 5")
    mark = page.locator(".mark-msg[data-field=syntax]")
    expect(mark).to_contain_text("mapping values are not allowed here")
    assert mark.evaluate("el => el.style.top") == f"{8 + 4 * 20}px"
    expect(page.locator(".gutter div.bad")).to_have_text("5")


def test_finetune_from_this_then_cancel_it_from_its_page(
    page: Page, service: Service, client: VitqClient, pretrained_job: int
) -> None:
    # One long fine-tune serves both checks: it must be running (from the pretrained weights) to be cancelled.
    page.goto(f"{service.url}/#/jobs/{pretrained_job}")
    page.get_by_role("link", name="Fine-tune from this").click()
    page.wait_for_url(f"**/#/submit?from_job={pretrained_job}")
    page.locator("#view[data-ready=true]").wait_for()
    editor = page.locator("textarea[name=spec]")
    text = editor.input_value()
    assert "kind: finetune" in text and f"init: {{from_job: {pretrained_job}}}" in text
    assert "embed_dim: 32" in text  # the parent's architecture
    assert (
        "  steps: 10\n" in text
    )  # a fine-tune's length (a quarter of the pretrain's 40), not the pretrain's
    editor.fill(text.replace("  steps: 10\n", "  steps: 100000\n"))
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url("**/#/jobs/*")
    finetune_id = int(page.url.rsplit("/", 1)[1])
    finetune = client.get(finetune_id)
    assert finetune["kind"] == "finetune" and finetune["parent_job_id"] == pretrained_job

    expect(page.locator("#view")).to_have_attribute("data-status", "running", timeout=TRAINING_TIMEOUT_MS)
    wait_for(lambda: client.get(finetune_id)["step"] > 0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#view")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator(".badge")).to_have_text("cancelled")
    assert client.get(finetune_id)["status"] == "cancelled"

    # Lineage, both ways: the fine-tune links to its parent, and the parent lists its fine-tunes.
    page.locator("a.parent-link").click()
    page.wait_for_url(f"**/#/jobs/{pretrained_job}")
    expect(page.locator("a.parent-link")).to_be_hidden()
    child = page.locator(f".children li[data-job-id='{finetune_id}']")
    expect(child).to_contain_text("cancelled")
    child.get_by_role("link").click()
    page.wait_for_url(f"**/#/jobs/{finetune_id}")
    expect(page.locator("a.parent-link")).to_have_text(f"from job #{pretrained_job}")

    # The cancelled fine-tune kept the checkpoint it saved on stopping: it can be fine-tuned from, choosing it.
    kept = max(client.checkpoints(finetune_id), key=lambda c: int(c["step"]))
    expect(page.get_by_role("link", name="Fine-tune from this")).to_be_visible()
    page.locator(f"a[data-checkpoint='{kept['name']}']").click()
    page.locator("#view[data-ready=true]").wait_for()
    expect(page.get_by_label("checkpoint")).to_have_value(kept["name"])
    text = editor.input_value()
    assert f"init: {{from_job: {finetune_id}, checkpoint: {kept['name']}}}" in text
    assert "  steps: 25000\n" in text  # a quarter of its parent's 100000
    editor.fill(text.replace("  steps: 25000\n", "  steps: 4\n"))
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url("**/#/jobs/*")
    grandchild = client.get(int(page.url.rsplit("/", 1)[1]))
    assert grandchild["parent_job_id"] == finetune_id
    assert grandchild["spec"]["init"]["checkpoint"] == kept["name"]
    expect(page.locator("a.parent-link")).to_have_text(f"from job #{finetune_id} ({kept['name']})")
    expect(page.locator("#view")).to_have_attribute("data-status", "succeeded", timeout=TRAINING_TIMEOUT_MS)


def test_chart_appends_new_steps_and_asks_for_a_reload_when_history_rewinds(
    page: Page, service: Service
) -> None:
    # A resumed attempt re-ingests its history with new ids: the `since` cursor then hands the page steps it has
    # already drawn, which must trigger a whole reload, never duplicate or out-of-order x values in uPlot.
    page.goto(f"{service.url}/#/")
    page.locator("#view[data-loaded=true]").wait_for()
    result = page.evaluate(
        """async () => {
          const { Board } = await import("/static/js/charts.js");
          const holder = document.body.appendChild(document.createElement("div"));
          const board = new Board(holder);
          board.addRun({ id: 1, name: "t", batchSize: 8 });
          const series = (steps) => ({ loss: { steps, values: steps.map((s) => 1 / s) } });
          const drawn = () => [...board.panels.get("loss").plot.data[0]];
          const answers = [board.setPoints(1, series([1, 2, 3]), { replace: true }), board.setPoints(1, series([4, 5]))];
          answers.push(board.setPoints(1, series([1, 2])));  // the history was written again from step 1
          board.render();
          const steps = drawn();
          answers.push(board.setPoints(1, series([1, 2]), { replace: true }));
          board.render();
          return { answers, steps, after: drawn() };
        }"""
    )
    assert result == {"answers": [True, True, False, True], "steps": [1, 2, 3, 4, 5], "after": [1, 2]}
    # A job that ended before its first evaluation keeps an empty validation chart: "yet" would be untrue.
    empty = page.evaluate(
        """async () => {
          const { Board } = await import("/static/js/charts.js");
          const board = new Board(document.body.appendChild(document.createElement("div")));
          const text = () => board.panels.get("val_top1").empty.textContent;
          const running = text();
          board.setEnded(true);
          return [running, text()];
        }"""
    )
    assert empty == ["no points yet", "no points: the job ended before logging any"]


def test_system_charts_and_worker_figures_come_from_the_real_worker(
    page: Page, service: Service, client: VitqClient, pretrained_job: int
) -> None:
    # The worker sampled the trainer's processes while it ran: plausible figures, at steps of the job.
    series = client.metrics(pretrained_job, names=["sys/cpu_percent", "sys/rss_bytes"])["series"]
    assert series["sys/rss_bytes"]["values"] and min(series["sys/rss_bytes"]["values"]) > 10 * 2**20
    assert series["sys/cpu_percent"]["values"] and min(series["sys/cpu_percent"]["values"]) >= 0
    assert all(0 <= step <= 40 for step in series["sys/rss_bytes"]["steps"])
    (worker,) = httpx.get(f"{service.url}/workers").json()["items"]
    usage = worker["usage"]
    assert 0 <= usage["cpu_percent"] <= 100 and 0 < usage["mem_used_bytes"] < usage["mem_total_bytes"]

    page.goto(f"{service.url}/#/jobs/{pretrained_job}")
    page.locator("#view[data-metrics-loaded=true]").wait_for()
    system = page.get_by_role("region", name="System")
    expect(system.locator("h2")).to_have_text("System")
    memory = system.locator('[data-chart="Memory"]')
    expect(memory).to_have_attribute("data-axes", "step | bytes")
    expect(memory.locator(".u-legend")).to_contain_text("resident (RAM)")
    expect(system.locator('[data-chart="CPU"]')).to_have_attribute("data-axes", "step | % of one core")
    # The first palette colour: drawn, not just framed. (How long the curves are depends on how many samples a
    # 40-step job gave the worker time to take: a few, all near step 0, on a fast machine.)
    assert stroke_pixels(page, "Memory", LOSS_COLOR) > 0
    assert stroke_pixels(page, "CPU", LOSS_COLOR) > 0
    expect(system.locator('[data-chart="GPU utilisation"]')).to_have_count(0)  # a CPU job has no GPU panel
    system.screenshot(path=str(ARTIFACTS / "system_charts.png"))

    page.goto(f"{service.url}/#/workers")
    figures = page.locator(f"tr[data-worker='{worker['name']}'] [data-host-usage]")
    expect(figures).to_contain_text(re.compile(r"CPU \d+% · RAM [\d.]+ [KMG]iB of [\d.]+ GiB"))


def test_full_log_pages_searches_and_downloads(
    page: Page, service: Service, client: VitqClient, pretrained_job: int
) -> None:
    found = httpx.get(f"{service.url}/jobs/{pretrained_job}/logs/search", params={"q": "val_top1"}).json()
    assert (
        len(found["matches"]) >= 4
    )  # the trainer's progress lines at each evaluation (every 10 of 40 steps)
    page.goto(f"{service.url}/#/jobs/{pretrained_job}")
    page.get_by_role("link", name="Full log, search and download →").click()
    page.wait_for_url(f"**/#/jobs/{pretrained_job}/log")
    expect(page.locator(".log-line").first).to_have_attribute("data-line", "1")
    expect(page.get_by_test_id("log-info")).to_contain_text("lines")

    page.get_by_label("search the log").fill("VAL_TOP1")  # case-blind unless asked
    page.get_by_role("button", name="Search").click()
    matches = page.locator(".log-matches li")
    expect(matches).to_have_count(len(found["matches"]))
    expect(page.get_by_test_id("search-status")).to_have_text(f"{len(found['matches'])} matching lines")
    expect(matches.first.locator("mark")).to_have_text("val_top1")
    expect(page.locator(".log-line mark").first).to_have_text("val_top1")  # the page's own lines, marked
    last = found["matches"][-1]["line"]
    matches.last.click()
    focused = page.locator(".log-line.focused")
    expect(focused).to_have_attribute("data-line", str(last))
    expect(focused).to_contain_text("val_top1")

    page.get_by_label("search the log").fill("no such text in any log")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("search-status")).to_have_text("no line matches")
    expect(matches).to_have_count(0)

    with page.expect_download() as saved:
        page.get_by_role("button", name="Download").click()
    assert saved.value.suggested_filename == f"job{pretrained_job}-train.log"
    assert (
        saved.value.path().read_bytes()
        == httpx.get(f"{service.url}/jobs/{pretrained_job}/logs/download").content
    )


@pytest.fixture(scope="module")
def families(client: VitqClient) -> dict[str, Any]:
    """A pretrain with a fine-tune and a fine-tune of that, and a two-job sweep: all in a pool no worker serves,
    so they wait in the queue and cost no training."""
    base = {**yaml.safe_load(tiny_spec("family")), "resources": {"device": "cpu", "pool": "idle"}}
    root = client.submit({**base, "name": "family-pretrain"})["id"]
    tuned = {**base, "kind": "finetune", "name": "family-tune", "init": {"from_job": root}}
    tune = client.submit(tuned)["id"]
    tune2 = client.submit({**tuned, "name": "family-tune2", "init": {"from_job": tune}})["id"]
    sweep = client.sweep({"name": "lrs", "base": base, "grid": {"optim.lr": [0.001, 0.002]}})
    children = [child["job"]["id"] for child in sweep["jobs"]]
    return {"root": root, "tune": tune, "tune2": tune2, "sweep": sweep["id"], "children": children}


def tbody_order(page: Page) -> list[str]:
    """The rows of the job list as shown: "group:KEY" or "job:ID@DEPTH"."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll("table.jobs tbody tr")].map((tr) =>
              tr.dataset.group ? `group:${tr.dataset.group}` : `job:${tr.dataset.jobId}@${tr.dataset.depth}`)"""
        )
    )


@pytest.mark.parametrize("width", [1920, 390])
def test_job_list_groups_by_sweep_and_by_lineage(
    browser: Browser, service: Service, families: dict[str, Any], width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{service.url}/#/")
        page.locator("#view[data-loaded=true]").wait_for()
        root, tune, tune2, sweep = families["root"], families["tune"], families["tune2"], families["sweep"]
        page.get_by_label("group by").select_option("lineage")
        header = page.locator(f"tr[data-group='lineage:{root}']")
        expect(header).to_contain_text(f"Lineage of #{root} · 3 jobs on this page")
        shown = tbody_order(page)
        at = shown.index(f"group:lineage:{root}")
        assert shown[at : at + 4] == [
            f"group:lineage:{root}",
            f"job:{root}@1",
            f"job:{tune}@2",
            f"job:{tune2}@3",
        ]
        assert "group=lineage" in page.url
        assert horizontal_overflow(page) == 0
        # These jobs wait with a long reason ("no worker of pool idle is running: ..."): it wraps in its cell
        # instead of widening the table past its box (at 1920 px it pushed the last columns out of sight).
        assert page.locator("#view .table-scroll").evaluate("b => b.scrollWidth - b.clientWidth") <= 0
        page.screenshot(path=str(ARTIFACTS / f"list_grouped_by_lineage_{width}.png"), full_page=True)

        page.get_by_label("group by").select_option("sweep")
        shown = tbody_order(page)
        at = shown.index(f"group:sweep:{sweep}")
        assert sorted(shown[at + 1 : at + 3]) == sorted(f"job:{child}@1" for child in families["children"])
        sweep_header = page.locator(f"tr[data-group='sweep:{sweep}']")
        expect(sweep_header).to_contain_text(f"Sweep #{sweep} · 2 jobs on this page")
        sweep_header.get_by_role("button", name="show the whole sweep").click()
        expect(page.locator("table.jobs tbody tr[data-job-id]")).to_have_count(2)
        assert f"sweep_id={sweep}" in page.url
        assert horizontal_overflow(page) == 0
        page.screenshot(path=str(ARTIFACTS / f"list_grouped_by_sweep_{width}.png"), full_page=True)

        page.locator("[data-narrowed=sweep_id]").click()  # every job again
        page.get_by_label("group by").select_option("lineage")
        page.locator(f"tr[data-group='lineage:{root}']").get_by_role(
            "button", name="show the whole lineage"
        ).click()
        expect(page.locator("table.jobs tbody tr[data-job-id]")).to_have_count(3)
        assert f"lineage_of={root}" in page.url
    finally:
        context.close()


def test_log_page_of_a_job_without_a_log_offers_no_download(
    page: Page, service: Service, families: dict[str, Any]
) -> None:
    # A queued job has no train.log yet: Download was offered, its 404 replaced the page with "Job N not found".
    job_id = families["root"]
    page.goto(f"{service.url}/#/jobs/{job_id}/log")
    expect(page.get_by_test_id("log-lines")).to_have_text("No log yet.")
    download = page.get_by_role("button", name="Download")
    expect(download).to_be_disabled()
    expect(download).to_have_attribute("title", re.compile("no log yet"))
    expect(page.get_by_role("heading", name=f"Log of job {job_id}")).to_be_visible()
