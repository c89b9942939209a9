"""End to end: a tab's download in headless Chromium holds the numbers on screen, and its provenance names the
view's link (the address bar's) and the command that gives the same numbers."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from tests.browser import CHROMIUM, ROOT, app_server, browser_page

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def decomposition_url(tmp_path_factory):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_PUBLIC": "1", "CLIPSCOPE_MODELS": "toy",
           "CLIPSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with app_server(ROOT / "spaces" / "decomposition" / "app.py", env) as url:
        yield url


def _download(page, tab: str, target: Path) -> dict[str, bytes]:
    page.click(f"#{tab}-download-run")
    link = page.locator(f"#{tab}-download a").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    download.value.save_as(target)
    with zipfile.ZipFile(target) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_decomposition_download_holds_the_numbers_on_screen(decomposition_url, tmp_path):
    with browser_page() as page:
        page.goto(decomposition_url + "?image=example:3&text=a+white+cross&text=a+red+circle&layer=3")
        page.locator("#decomposition-info").get_by_text("Reconstruction error").wait_for(timeout=120_000)
        page.wait_for_function("/L\\d+H\\d+/.test(document.querySelector('#decomposition-table')?.innerText || '')",
                               timeout=30_000)
        # the table as a person sees it: component, layer, head, contribution (cosine x100)
        table = page.locator("#decomposition-table").inner_text()
        shown = re.findall(r"(L\d+H\d+)\s+(\d+)\s+(\d+)\s+(-?[\d.]+(?:e-?\d+)?)", table)
        info = page.locator("#decomposition-info").inner_text()
        address = page.evaluate("location.search.slice(1)")
        files = _download(page, "decomposition", tmp_path / "decomposition.zip")

    assert {"decomposition.json", "decomposition.csv", "provenance.json"} <= set(files)
    rows = list(csv.DictReader(io.StringIO(files["decomposition.csv"].decode())))
    column = next(c for c in rows[0] if c.startswith("contribution"))
    text = rows[0]["text"]
    by_head = {(r["layer"], r["head"]): float(r[column]) for r in rows if r["text"] == text and r["head"]}
    assert len(shown) >= 10
    for component, layer, head, value in shown:
        assert component == f"L{layer}H{head}"
        assert round(by_head[(layer, head)], 4) == pytest.approx(float(value), abs=1e-9), component
    # the info's cosine line (x100, 3 decimals) equals the CSV's total
    totals = {r["text"]: float(r[column]) for r in rows if r["component"] == "total (cosine)"}
    for name, total in totals.items():
        assert f"{total:+.3f}" in info, name
    objects = json.loads(files["decomposition.json"])
    assert [o["text"] for o in objects] == ["a white cross", "a red circle"]
    record = json.loads(files["provenance.json"])
    assert unquote_plus(record["link"][1:]) == unquote_plus(address)  # the link of the view on screen
    assert record["model"] == "toy" and record["image"] == "example:3" and record["device"] == "cpu"
    assert any("python -m core decompose" in line for line in record["commands"])
    for data in files.values():  # public mode: no server path in any file
        assert str(ROOT).encode() not in data and b"/tmp/" not in data


@pytest.mark.slow  # the whole suite in a browser, two page loads: over 20 s on 2 cores
def test_a_clicked_ranking_row_opens_its_head_in_the_heads_tab(tmp_path):
    env = {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(tmp_path / "cache")}
    with app_server(ROOT / "app.py", env) as url, browser_page() as page:
        page.goto(url + "?tab=decomposition&image=example:3&text=a+white+cross&text=a+red+circle")
        page.wait_for_function("/L\\d+H\\d+/.test(document.querySelector('#decomposition-table')?.innerText || '')",
                               timeout=120_000)
        first = re.search(r"L(\d+)H(\d+)", page.locator("#decomposition-table").inner_text())
        page.locator("#decomposition-table span.text:visible", has_text=re.compile(f"^{first.group(0)}$")).first.click()
        link = page.locator("#decomposition-table-open a", has_text="open it in the Heads tab")
        link.wait_for(timeout=30_000)
        with page.context.expect_page() as opened:  # Gradio's Markdown opens links in a new browser tab
            link.click()
        heads = opened.value
        heads.locator("#heads-info").get_by_text(f"Head {first.group(0)}").wait_for(timeout=120_000)
        assert f"layer={first.group(1)}" in heads.url and f"head={first.group(2)}" in heads.url
        assert "tab=heads" in heads.url
