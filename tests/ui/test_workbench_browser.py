"""Issue 23, items 2-4, on screen in a real browser: the texts box follows the example and the link, titles and
colour-bar labels are visible and not covered, no stale result after an error, Copy link never copies a bare '/?'.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import units
from core.links.images import default_texts
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, app_server

# slow: one app and one browser session for every check, over a minute on 2 cores
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "app.py", env) as url:
        yield url


@pytest.fixture()
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100},
                                      permissions=["clipboard-read", "clipboard-write"])
        try:
            yield context.new_page()
        finally:
            browser.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _wait(page, selector: str, text: str, timeout: float = 120_000) -> str:
    page.locator(selector).get_by_text(text).first.wait_for(timeout=timeout)
    return page.locator(selector).inner_text()


def _pick_example(page, tab: str, ref: str) -> None:
    """Click the example row of `ref` in the tab's examples table (its id column is unique)."""
    panel = page.locator(f"#{tab}-image").locator("xpath=ancestor::div[contains(@class,'column')][1]")
    panel.locator("tr", has_text=ref).first.click()


def _uncovered(page, selector: str) -> list:
    """For each picture under `selector`: (whole: not cropped, its top and bottom bands not covered by anything,
    its caption not cut). Checked with the browser's own hit testing at points along the picture's top and bottom
    rows (its title, its colour bar's labels)."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector + ' img')].map(img => {
        const r = img.getBoundingClientRect();
        const ratio = img.naturalWidth / img.naturalHeight, shown = r.width / r.height;
        const whole = getComputedStyle(img).objectFit === 'contain' || Math.abs(ratio - shown) < 0.02;
        img.scrollIntoView({block: 'center'});
        const s = img.getBoundingClientRect();
        const at = (y, fs) => fs.every(f => document.elementFromPoint(s.left + f * s.width, y) === img);
        // the colour bar's labels span the bottom; titles start at the left of each panel (Gradio's own
        // fullscreen/download buttons keep the top-right corner)
        const visible = at(s.bottom - 0.04 * s.height, [0.1, 0.5, 0.9]) && at(s.top + 0.04 * s.height, [0.05, 0.55]);
        const caption = img.closest('.thumbnail-item') && img.closest('.thumbnail-item').querySelector('.caption-label');
        const full = !caption || caption.scrollWidth <= caption.clientWidth + 1;
        return [whole, visible, full];
    })""", selector)


def test_texts_follow_the_example_and_the_link(app_url, page):
    page.goto(app_url + "?tab=decomposition&image=example:3")
    _wait(page, "#decomposition-info", "Reconstruction error")
    box = page.locator("#decomposition-texts textarea")
    assert box.input_value().splitlines() == default_texts("example:3")  # what the view computed with
    assert units.POLICY.split(":")[0] in page.locator("#app-notice").inner_text()  # the unit policy, once

    _pick_example(page, "decomposition", "example:5")
    page.wait_for_function("(want) => document.querySelector('#decomposition-texts textarea').value === want",
                           arg="\n".join(default_texts("example:5")), timeout=30_000)
    page.locator("#decomposition-image-id textarea, #decomposition-image-id input").first.fill("world:7:12")
    page.locator("#decomposition-image-id textarea, #decomposition-image-id input").first.press("Enter")
    page.wait_for_function("(want) => document.querySelector('#decomposition-texts textarea').value === want",
                           arg="\n".join(default_texts("world:7:12")), timeout=30_000)  # a typed id too
    _tab(page, "Heads")
    _pick_example(page, "heads", "example:4")
    page.wait_for_function("(want) => document.querySelector('#heads-texts-input textarea').value === want",
                           arg="\n".join(default_texts("example:4")[:2]), timeout=30_000)
    _tab(page, "Segmentation")
    _pick_example(page, "segmentation", "example:2")
    page.wait_for_function("(want) => document.querySelector('#segmentation-texts textarea').value === want",
                           arg="\n".join(default_texts("example:2")), timeout=30_000)


def test_titles_and_colour_bars_are_on_screen(app_url, page):
    page.goto(app_url + "?tab=heads&model=toy&layer=3&head=1&text=a+green+cross&text=a+pink+background"
               "&image=example:0")
    _wait(page, "#heads-image-info", "Heads ranked")
    page.wait_for_function("() => document.querySelectorAll('#heads-maps img').length >= 3", timeout=60_000)
    page.wait_for_timeout(500)
    maps = _uncovered(page, "#heads-maps")
    assert len(maps) >= 3 and all(all(flags) for flags in maps), maps
    assert all(all(flags) for flags in _uncovered(page, "#heads-grid")), "the head grid is covered"

    _tab(page, "Neurons")
    page.fill("#neurons-layer input", "2")
    page.fill("#neurons-neuron input", "17")
    page.click("#neurons-show")
    page.wait_for_function("() => document.querySelectorAll('#neurons-gallery img').length >= 4", timeout=60_000)
    page.wait_for_timeout(500)
    tops = _uncovered(page, "#neurons-gallery")
    assert len(tops) >= 4 and all(all(flags) for flags in tops), tops

    page.goto(app_url + "?tab=segmentation&model=toy&text=a+green+cross&image=example:0&method=heads"
               "&compare=rollout&background=a+pink+background")
    _wait(page, "#segmentation-info", "IoU rollout")
    for elem in ("segmentation-heat", "segmentation-mask", "segmentation-labels", "segmentation-truth"):
        page.locator(f"#{elem} img").first.wait_for(timeout=60_000)
        # no Gradio label over the picture's own title (drawn in its top rows), nothing over its bottom rows
        assert all(flags[:2] == [True, True] for flags in _uncovered(page, f"#{elem}")), elem
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "workbench-segmentation.png"), full_page=True)


def test_no_stale_result_after_an_error_and_copy_link_is_never_bare(app_url, page):
    page.goto(app_url + "?tab=segmentation&model=toy&text=a+green+cross&image=example:0&method=heads")
    _wait(page, "#segmentation-info", "IoU heads")
    page.locator("#segmentation-texts textarea").fill(" ")
    page.click("#segmentation-run")
    page.get_by_text("Type at least one class text").first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#segmentation-info').innerText.includes('IoU')",
                           timeout=30_000)
    assert page.locator("#segmentation-heat img").count() == 0  # the earlier maps are gone too

    page.goto(app_url + "?tab=heads&model=toy&layer=3&head=9")  # a linked view that fails
    page.get_by_text("could not be computed").first.wait_for(timeout=60_000)
    page.click("#heads-copy")
    copied = _wait(page, "#heads-copied", "Copied")
    link = copied.split("Copied: ", 1)[1].strip()
    assert not link.endswith("/?") and "tab=heads" in link and "head=9" in link
