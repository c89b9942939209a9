"""End to end: the Adversarial tab alone, in headless Chromium, on toy-biased with the world generator."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page, fill_and_settle

# slow: a browser session of this tab takes over 20 s on 2 cores (tests/ui/test_browser.py stays quick)
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_BASES": "", "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "spaces" / "adversarial" / "app.py", env) as url:
        yield url


def _fill(page, element: str, value: str) -> None:
    fill_and_settle(page.locator(f"{element} input, {element} textarea").first, value)


def test_adversarial_tab_end_to_end(app_url, tmp_path):
    with browser_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#adversarial-run", timeout=60_000)
        assert page.locator("#adversarial-model input, #adversarial-model textarea").first.input_value() == "toy-biased"
        # the same class twice: a clear error, and the app keeps serving
        _fill(page, "#adversarial-target", "square")
        page.click("#adversarial-run")
        page.get_by_text("the present and target classes are the same").first.wait_for(timeout=60_000)
        _fill(page, "#adversarial-target", "triangle")
        _fill(page, "#adversarial-images", "20")
        _fill(page, "#adversarial-repeats", "1")
        page.click("#adversarial-run")
        info = page.locator("#adversarial-info")
        info.get_by_text("Counts (second-order").wait_for(timeout=180_000)
        text = info.inner_text()
        assert "toy-biased" in text and "offline stand-in" in text and "python -m core adversarial" in text
        page.wait_for_function("() => document.querySelectorAll('#adversarial-gallery img').length >= 10",
                               timeout=60_000)
        success = page.locator("#adversarial-success").inner_text()
        for method in ("second-order", "random neurons", "similar words"):
            assert method in success
        # the word chart shows the planted cue
        page.locator("#adversarial-words").get_by_text("dotted").first.wait_for(timeout=30_000)
        page.click("#adversarial-download-run")
        link = page.locator("#adversarial-download a").first
        link.wait_for(timeout=60_000)
        with page.expect_download() as download:
            link.click()
        archive = tmp_path / "results.zip"
        download.value.save_as(archive)
        names = zipfile.ZipFile(archive).namelist()
        assert "results.csv" in names and "summary.json" in names and sum(n.endswith(".png") for n in names) == 60
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "adversarial-tab.png"), full_page=True)


def test_adversarial_tab_alone_opens_a_link(app_url):
    """Alone, the tab reads a link without `tab=`: the settings come back, and Generate runs them."""
    with browser_page() as page:
        page.goto(app_url + "?text=circle&text=square&images=8&repeats=1&baselines=no&seed=2")
        page.locator("#adversarial-notice").get_by_text("press Generate").wait_for(timeout=60_000)
        values = [page.locator(f"#adversarial-{name} input, #adversarial-{name} textarea").first.input_value()
                  for name in ("model", "present", "target", "images", "repeats")]
        assert values == ["toy-biased", "circle", "square", "8", "1"]
        assert not page.locator("#adversarial-baselines input").is_checked()
        page.wait_for_function("() => location.search.startsWith('?tab=adversarial&model=toy-biased&text=circle"
                               "&text=square&method=world')", timeout=30_000)
        page.click("#adversarial-run")
        page.locator("#adversarial-info").get_by_text("Counts (second-order").wait_for(timeout=120_000)
        assert "images 8" in page.locator("#adversarial-info").inner_text()
