"""Headless Chromium (Debian's /usr/bin/chromium driven by Playwright over CDP) and one real service per module.

Screenshots go to test-artifacts/ (gitignored): look at them after a change to the dashboard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            "browser tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium; .ci/run does it)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page; its last state is saved as test-artifacts/<test name>.png, pass or fail."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    opened.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def stroke_pixels(
    page: Page,
    chart: str,
    rgb: tuple[int, int, int],
    *,
    alpha: tuple[int, int] = (129, 255),
    tolerance: int = 40,
) -> int:
    """How many pixels of a chart's canvas (its `data-chart` title) are close to colour `rgb`, with an opacity
    in `alpha` (the canvas is transparent: a faint curve is the same colour at a low alpha)."""
    return int(
        page.evaluate(
            """([chart, [r, g, b], [low, high], tolerance]) => {
              const canvas = document.querySelector(`[data-chart="${chart}"] canvas`);
              const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
              let count = 0;
              for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - r) < tolerance && Math.abs(data[i + 1] - g) < tolerance
                    && Math.abs(data[i + 2] - b) < tolerance && data[i + 3] >= low && data[i + 3] <= high) count++;
              }
              return count;
            }""",
            [chart, list(rgb), list(alpha), tolerance],
        )
    )


def horizontal_overflow(page: Page) -> int:
    """Pixels the page is wider than the window (0 when nothing scrolls sideways)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))
