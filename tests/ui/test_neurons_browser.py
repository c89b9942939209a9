"""End to end: the Neurons tab alone, in headless Chromium: compute statistics, inspect a neuron,
map it on an image, search by text, discover concepts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page, fill_and_settle

# slow: a browser session of this tab takes over 20 s on 2 cores (tests/ui/test_browser.py stays quick)
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": os.environ.get("CLIPSCOPE_TEST_APP_MODEL", "Tiny-ViT/none"), "CLIPSCOPE_BASES": "",
           "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"),
           "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "spaces" / "neurons" / "app.py", env) as url:
        yield url


def _fill(page, element: str, value: str) -> None:
    fill_and_settle(page.locator(f"{element} input").first, value)


def _wait_rows(page, element: str, at_least: int) -> None:
    """Wait until a Gradio dataframe holds at least `at_least` data rows (it renders rows virtually)."""
    page.wait_for_function(
        "([sel, n]) => { const grid = document.querySelector(sel + ' [role=grid]');"
        " return grid && Number(grid.getAttribute('aria-rowcount')) > n; }", arg=[element, at_least], timeout=60_000)


def test_neurons_tab_end_to_end(app_url, scene_png):
    with browser_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#neurons-show", timeout=60_000)
        page.locator("#neurons-status").get_by_text("Compute statistics below").wait_for(timeout=60_000)
        # no bases for this model yet: a clear error, and the app keeps serving
        page.click("#neurons-show")
        page.get_by_text("No neuron statistics for model").first.wait_for(timeout=30_000)
        page.get_by_text("Compute statistics (your session only)").click()
        _fill(page, "#neurons-scenes", "150")
        _fill(page, "#neurons-k", "10")
        page.click("#neurons-compute")
        status = page.locator("#neurons-status")
        status.get_by_text("mean reconstruction cosine").wait_for(timeout=180_000)
        text = status.inner_text()
        assert "150 generated world scenes" in text and "text pool toy" in text and "normalise_texts" in text
        _fill(page, "#neurons-neuron", "5")
        page.click("#neurons-show")
        page.locator("#neurons-neuron-info").get_by_text("neuron 5").wait_for(timeout=60_000)
        _wait_rows(page, "#neurons-terms", 4)
        page.wait_for_function("() => document.querySelectorAll('#neurons-gallery img').length >= 4", timeout=30_000)
        page.set_input_files("#neurons-image input[type=file]", str(scene_png))
        page.wait_for_selector("#neurons-image img", timeout=30_000)
        page.click("#neurons-map-run")
        page.locator("#neurons-effect").get_by_text("vs threshold").wait_for(timeout=60_000)
        image = page.locator("#neurons-map img").first
        image.wait_for(timeout=30_000)
        page.wait_for_function("(img) => img.naturalWidth > 100", arg=image.element_handle(), timeout=30_000)
        page.click("#neurons-concepts-run")
        page.locator("#neurons-concepts-info").get_by_text("activated neurons in layer").wait_for(timeout=60_000)
        page.click("#neurons-search-run")
        _wait_rows(page, "#neurons-search-table", 5)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "neurons-tab.png"), full_page=True)
