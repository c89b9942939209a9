"""End to end: the Circuits tab alone, in headless Chromium, on the toy model's shipped bases: a link opens a
neuron's circuit, data edges, the real-effect share, a head's in-edges, the link and its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page, fill_and_settle

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "spaces" / "circuits" / "app.py", env) as url:
        yield url


def _wait_rows(page, element: str, at_least: int) -> None:
    page.wait_for_function(
        "([sel, n]) => { const grid = document.querySelector(sel + ' [role=grid]');"
        " return grid && Number(grid.getAttribute('aria-rowcount')) > n; }", arg=[element, at_least], timeout=90_000)


def test_circuits_tab_end_to_end(app_url):
    with browser_page() as page:
        page.goto(app_url + "?tab=circuits&model=toy&layer=1&neuron=5&head=2.1")
        # the link's first answer: the weight-edge map of L1.n5, its paths with head texts, its terms, the in-edges
        page.locator("#circuits-info").get_by_text("L1.n5").wait_for(timeout=120_000)
        image = page.locator("#circuits-map img").first
        image.wait_for(timeout=60_000)
        page.wait_for_function("(img) => img.naturalWidth > 200", arg=image.element_handle(), timeout=60_000)
        _wait_rows(page, "#circuits-paths", 4)
        _wait_rows(page, "#circuits-terms", 3)
        assert "L2H0" in page.locator("#circuits-paths").inner_text()
        page.locator("#circuits-in-info").get_by_text("In-edges of head L2H1").wait_for(timeout=60_000)
        _wait_rows(page, "#circuits-in", 5)
        assert page.locator("#circuits-head input, #circuits-head textarea").first.input_value() == "2.1"
        # data edges over the neuron's top images
        page.get_by_text("data edges (the neuron's top images)").click()
        page.click("#circuits-show")
        page.locator("#circuits-info").get_by_text("the sum of the edges (exact)").wait_for(timeout=180_000)
        assert "top 100 images" in page.locator("#circuits-info").inner_text()
        # the share of the neuron's real effect the lens explains
        page.click("#circuits-ablation-run")
        page.locator("#circuits-ablation-info").get_by_text("of the neuron's real effect").wait_for(timeout=240_000)
        _wait_rows(page, "#circuits-ablation", 6)
        # another head's in-edges
        fill_and_settle(page.locator("#circuits-head textarea, #circuits-head input").first, "3.0")
        page.click("#circuits-in-run")
        page.locator("#circuits-in-info").get_by_text("In-edges of head L3H0").wait_for(timeout=60_000)
        # the link of the view and the command that gives its numbers
        page.wait_for_function("() => location.search.includes('method=data') && location.search.includes('head=3.0')",
                               timeout=30_000)
        page.get_by_text("Cite / reproduce").click()
        cite = page.locator("#circuits-cite")
        cite.get_by_text("python -m core circuit").first.wait_for(timeout=30_000)
        assert "--images world:2000:1:heldout" in cite.inner_text() and "--head 3.0" in cite.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "circuits-tab.png"), full_page=True)


def test_a_bad_neuron_is_a_message_and_the_tab_keeps_answering(app_url):
    with browser_page() as page:
        page.goto(app_url)
        page.wait_for_selector("#circuits-show", timeout=60_000)
        fill_and_settle(page.locator("#circuits-neuron input").first, "5000")
        page.click("#circuits-show")
        page.get_by_text("neuron 5000 is out of range").first.wait_for(timeout=60_000)
        fill_and_settle(page.locator("#circuits-neuron input").first, "7")
        page.click("#circuits-show")
        page.locator("#circuits-info").get_by_text("L1.n7").wait_for(timeout=60_000)
