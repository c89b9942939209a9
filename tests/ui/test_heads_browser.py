"""End to end: the Heads tab on its own in headless Chromium, as a person would use it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from core.cli import main
from core.world.examples import example_images
from core.world.scenes import TEXT_POOL_PATH, load_toy_texts, write_scenes
from tests.browser import ARTIFACTS, CHROMIUM, ROOT, app_server, browser_page

# slow: a browser session of this tab takes over 20 s on 2 cores (tests/ui/test_browser.py stays quick)
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def heads_url(tmp_path_factory):
    """The tab alone, with bases for layer 2 only: other layers' texts must be computed in the tab."""
    folder = tmp_path_factory.mktemp("heads-app")
    scenes = write_scenes(folder / "scenes", 30, seed=21)
    bases = folder / "bases"
    assert main(["textspan", "--model", "Tiny-ViT/none", "--images", str(scenes / "images"), "--texts",
                 str(TEXT_POOL_PATH), "--layers", "2", "--rank", "16", "--per-head", "6", "--out", str(bases)]) == 0
    env = {"CLIPSCOPE_MODEL": "Tiny-ViT/none", "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"),
           "CLIPSCOPE_BASES": f"Tiny-ViT/none={bases}"}
    with open(scenes / "labels.csv") as source, open(scenes / "metadata.csv", "w") as grouped:
        grouped.write("file,label,group\n")
        grouped.writelines(f"{row['file']},{row['shape']},{row['background']}\n" for row in csv.DictReader(source))
    with app_server(ROOT / "spaces" / "heads" / "app.py", env) as url:
        yield url, scenes


def _wait_text(page, selector, text, timeout=120_000):
    page.locator(selector).get_by_text(text).first.wait_for(timeout=timeout)
    return page.locator(selector).inner_text()


def test_heads_tab_end_to_end(heads_url):
    heads_url, grouped = heads_url
    query = example_images()[2]  # the server shares this cache (CLIPSCOPE_CACHE), so the query is in its gallery
    pool = load_toy_texts()
    with browser_page() as page:
        page.goto(heads_url)
        page.wait_for_selector("#heads-show", timeout=60_000)
        page.click("#heads-show")
        info = _wait_text(page, "#heads-info", "6 texts explain")
        assert "TextSpan from bases" in info and "30 images" in info and "rank 1" in info
        assert "pytest" not in info and ".../images" in info  # no server folder named
        assert sum(text in page.locator("#heads-texts").inner_text() for text in pool) >= 5
        page.fill("#heads-layer input", "1")
        page.click("#heads-show")
        _wait_text(page, "#heads-info", "No TextSpan for head L1H0 yet")

        page.get_by_text("Compute TextSpan here").click()
        page.click("#heads-compute")
        info = _wait_text(page, "#heads-info", "10 texts explain")
        assert "L1H0" in info and "200 generated held-out world scenes" in info and "toy text pool" in info and "convention paper" in info
        table = page.locator("#heads-texts").inner_text()
        assert sum(text in table for text in pool) >= 5 and "variance explained" in table

        page.set_input_files("#heads-image input[type=file]", query)
        page.wait_for_selector("#heads-image img", timeout=30_000)
        page.click("#heads-explain")
        image_info = _wait_text(page, "#heads-image-info", "Heads ranked")
        assert "Tiny-ViT/none" in image_info and "Convention:" in image_info
        top_heads = page.locator("#heads-top-heads").inner_text()
        assert "score" in top_heads and any(c.isdigit() for c in top_heads)
        grid = page.locator("#heads-grid img[src*='file=']").first
        grid.wait_for(timeout=30_000)
        assert page.evaluate("(img) => img.naturalWidth", grid.element_handle()) > 100
        page.wait_for_function("() => document.querySelectorAll('#heads-maps img').length >= 3", timeout=30_000)
        assert "difference" in page.locator("#heads-maps").inner_text()
        assert any(text in page.locator("#heads-top-texts").inner_text() for text in pool)

        page.click("#heads-retrieve")
        retrieval = _wait_text(page, "#heads-retrieval-info", "gallery:")
        assert "48 generated held-out world scenes" in retrieval
        page.wait_for_function("() => document.querySelectorAll('#heads-gallery img').length >= 8", timeout=60_000)
        assert "#1 cosine +1.0000" in page.locator("#heads-gallery").inner_text()  # the query finds itself first
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "heads-tab.png"), full_page=True)
        assert os.path.getsize(ARTIFACTS / "heads-tab.png") > 10_000

        page.get_by_text("Spurious-cue removal").click()
        page.fill("#heads-grouped textarea", str(grouped))
        page.fill("#heads-ablated textarea", "2.1,2.2")
        page.click("#heads-spurious")
        spurious = _wait_text(page, "#heads-spurious-info", "Evaluated on")
        assert "30 images" in spurious and "means from the evaluated set itself" in spurious
        table = page.locator("#heads-spurious-table").inner_text()
        assert "worst group" in table and "chosen heads ablated" in table and "2 random heads" in table

        page.fill("#heads-head input", "9")  # out of range: a clear error, and the app keeps serving
        page.click("#heads-show")
        page.get_by_text("head must be a whole number from 0 to").first.wait_for(timeout=30_000)
        assert "texts explain" not in page.locator("#heads-info").inner_text()  # the stale result is cleared
