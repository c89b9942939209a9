"""End to end: the Segmentation tab alone, in headless Chromium, as a person would use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page

# slow: a browser session of this tab takes over 20 s on 2 cores (tests/ui/test_browser.py stays quick)
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_BASES": "", "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache")),
           "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs")}
    with app_server(ROOT / "spaces" / "segmentation" / "app.py", env) as url:
        yield url


def _src(page, element: str) -> str | None:
    return page.evaluate(f"() => {{ const img = document.querySelector(\"{element} img\"); return img && img.src; }}")


def _wait_new_image(page, element: str, old: str | None) -> None:
    page.wait_for_function(
        "([sel, old]) => { const img = document.querySelector(sel + ' img');"
        " return img && img.src !== old && img.naturalWidth > 100; }", arg=[element, old], timeout=60_000)


def test_segmentation_tab_end_to_end(app_url):
    from core.world.examples import example_images

    example = example_images()[0]  # a generated-world example: green cross on a pink background
    with browser_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#segmentation-run", timeout=60_000)
        # no image yet: a clear error, and the app keeps serving
        page.click("#segmentation-run")
        page.get_by_text("Upload an image or pick an example first").first.wait_for(timeout=30_000)
        page.set_input_files("#segmentation-image input[type=file]", example)
        page.wait_for_selector("#segmentation-image img", timeout=30_000)
        page.click("#segmentation-run")
        info = page.locator("#segmentation-info")
        info.get_by_text("Generated-world example").wait_for(timeout=120_000)
        text = info.inner_text()
        assert "toy" in text and "heads:" in text and "S > mean(S)" in text and "green cross" in text
        assert "python -m core segment" in text and "IoU heads" in text
        first_iou = float(text.split("| a green cross |")[1].split("|")[0]) if "| a green cross |" in text else None
        _wait_new_image(page, "#segmentation-heat", None)
        for element in ("#segmentation-mask", "#segmentation-labels", "#segmentation-truth"):
            _wait_new_image(page, element, None)
        # the threshold slider re-renders the mask from the stored maps
        before = _src(page, "#segmentation-mask")
        box = page.locator("#segmentation-threshold input[type=number]")
        box.fill("0.9")
        box.press("Enter")
        _wait_new_image(page, "#segmentation-mask", before)
        info.get_by_text("S > 0.9").first.wait_for(timeout=30_000)
        # side by side with a second method
        before = {element: _src(page, element) for element in ("#segmentation-mask", "#segmentation-labels",
                                                                 "#segmentation-heat")}
        page.locator("#segmentation-compare input").click()
        page.locator("li[role=option][aria-label='rollout']").first.click()
        info.get_by_text("IoU rollout").wait_for(timeout=120_000)
        assert "does not depend on the text" in info.inner_text()
        for element, old in before.items():
            _wait_new_image(page, element, old)
        width = page.evaluate("() => document.querySelector('#segmentation-heat img').naturalWidth")
        assert width > 2 * 192  # two methods side by side
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "segmentation-tab.png"), full_page=True)
        # bad input: no texts
        page.locator("#segmentation-texts textarea").fill("  ")
        page.click("#segmentation-run")
        page.get_by_text("Type at least one class text").first.wait_for(timeout=30_000)
        assert first_iou is None or 0 <= first_iou <= 1


def test_segmentation_tab_alone_opens_a_link(app_url):
    """Alone, the tab reads a link without `tab=`; the address bar then holds the view's canonical link."""
    with browser_page() as page:
        page.goto(app_url + "?model=toy&image=world:4:2&text=a+red+circle&method=rollout&threshold=2")
        info = page.locator("#segmentation-info")
        info.get_by_text("world scene 2 of seed 4").wait_for(timeout=120_000)
        assert "rollout" in info.inner_text() and "IoU rollout" in info.inner_text()
        assert "Ignored threshold=2.0" in page.locator("#segmentation-notice").inner_text()
        page.wait_for_function("() => location.search.startsWith('?tab=segmentation&model=toy&text=a+red+circle"
                               "&image=world:4:2&method=rollout')", timeout=30_000)
