"""End to end: the real app in headless Chromium, as a person would use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url():
    spec = os.environ.get("CLIPSCOPE_TEST_APP_MODEL", "toy")
    env = {"CLIPSCOPE_MODEL": spec, "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs")}
    with app_server(ROOT / "app.py", env) as url:
        yield url


def test_decomposition_tab_end_to_end(app_url, scene_png):
    with browser_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#decomposition-run", timeout=60_000)
        # no image yet: a clear error, and the app keeps serving
        page.click("#decomposition-run")
        page.get_by_text("Upload an image or pick an example first").first.wait_for(timeout=30_000)
        page.set_input_files("#decomposition-image input[type=file]", str(scene_png))
        page.wait_for_selector("#decomposition-image img", timeout=30_000)
        page.click("#decomposition-run")
        info = page.locator("#decomposition-info")
        info.get_by_text("Reconstruction error").wait_for(timeout=120_000)
        text = info.inner_text()
        assert "Convention:" in text and "paper" in text and "a red circle" in text
        error = float(text.split("Reconstruction error:")[1].split()[0])
        assert error < 1e-5
        for element in ("#decomposition-grid", "#decomposition-map"):
            image = page.locator(f"{element} img[src*='file=']").first
            image.wait_for(timeout=30_000)
            assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) > 100
        # choosing one head re-renders the token map without recomputing
        before = page.locator("#decomposition-map img[src*='file=']").first.get_attribute("src")
        page.locator("#decomposition-head input").click()
        page.locator("li[role=option][aria-label='1']").first.click()
        page.wait_for_function(
            "(old) => { const img = document.querySelector(\"#decomposition-map img[src*='file=']\");"
            " return img && img.src !== old && img.naturalWidth > 100; }", arg=before, timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "decomposition-tab.png"), full_page=True)


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_heads_and_neurons_tabs_answer_from_the_shipped_bases(app_url):
    """On a fresh checkout with no network, the explorers answer at once from the toy model's shipped bases."""
    with browser_page() as page:
        page.goto(app_url)
        page.get_by_role("tab", name="Heads").click()
        page.click("#heads-show")
        page.locator("#heads-info").get_by_text("TextSpan from bases").wait_for(timeout=60_000)
        assert "toy" in page.locator("#heads-info").inner_text()
        page.wait_for_function("document.querySelector('#heads-texts').innerText.split('\\n').length > 15",
                               timeout=30_000)
        page.get_by_role("tab", name="Neurons").click()
        page.locator("#neurons-status").get_by_text("Neuron statistics (bases").wait_for(timeout=60_000)
        page.click("#neurons-show")
        page.locator("#neurons-neuron-info").get_by_text("threshold").wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#neurons-terms').innerText.split('\\n').length > 6",
                               timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "neurons-tab-toy-bases.png"), full_page=True)
