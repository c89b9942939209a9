"""Deep links in a real browser: every tab restores its view and numbers from a link, after a restart too; Copy
link copies a link that reopens the view; the app works embedded (iframe and <gradio-app>) with a deep link; and
two visitors of the Heads tab never see each other's results."""

from __future__ import annotations

import http.server
import re
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, app_server, fill_and_settle, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]

LINKS = {
    "decomposition": "?tab=decomposition&model=toy&layer=3&head=1&text=a+green+cross&text=a+red+circle"
                     "&image=example:0&convention=paper&colour=red",
    "heads": "?tab=heads&model=toy&layer=3&head=1&text=a+white+cross&text=a+pink+background&image=example:2"
             "&convention=paper&method=cosine&zoom=2",
    "neurons": "?tab=neurons&model=toy&layer=2&neuron=5&text=a+red+circle&image=example:0&threshold=1.0&x=1",
    "segmentation": "?tab=segmentation&model=toy&text=a+green+cross&text=a+red+circle&image=example:0&method=heads"
                    "&threshold=0.5&background=a+pink+background&compare=rollout&bogus=1",
    "adversarial": "?tab=adversarial&model=toy-biased&text=square&text=triangle&method=world&images=12&repeats=2"
                   "&seed=3&baselines=yes&judge=toy&layers=1,2&block=red,blue&zzz=1",
}
# What each link must show (element, text), and the element whose text must be identical after a restart.
EXPECT = {
    "decomposition": ("#decomposition-info", "Reconstruction error"),
    "heads": ("#heads-image-info", "Heads ranked"),
    "neurons": ("#neurons-concepts-info", "activated neurons in layer 2"),
    "segmentation": ("#segmentation-info", "IoU rollout"),
    "adversarial": ("#adversarial-notice", "press Generate"),  # a run takes seconds: the link restores settings
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _env(cache) -> dict:
    return {"CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(cache)}


@pytest.fixture(scope="module")
def app_url(cache):
    with app_server(ROOT / "app.py", _env(cache)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser, **kwargs):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, **kwargs)
    return context, context.new_page()


def _wait(page, selector: str, text: str, timeout: float = 120_000) -> str:
    page.locator(selector).get_by_text(text).first.wait_for(timeout=timeout)
    return page.locator(selector).inner_text()


def _open_link(browser, url: str, tab: str) -> dict:
    """Open a tab's link; return what it shows."""
    context, page = _page(browser)
    try:
        page.goto(url + LINKS[tab])
        selector, text = EXPECT[tab]
        shown = {"main": _wait(page, selector, text)}
        page.wait_for_function(f"() => location.search.startsWith('?tab={tab}&model=toy')", timeout=30_000)
        shown["url"] = page.url
        shown["notice"] = page.locator(f"#{tab}-notice").inner_text()
        if tab == "decomposition":
            shown["layer"] = page.locator("#decomposition-layer input").input_value()
            shown["head"] = page.locator("#decomposition-head input").input_value()
            shown["table"] = page.locator("#decomposition-table").inner_text()
        if tab == "heads":
            _wait(page, "#heads-info", "texts explain")
            page.wait_for_function("() => document.querySelector('#heads-texts').innerText.includes('variance')")
            shown["texts"] = page.locator("#heads-texts").inner_text()
            shown["head"] = page.locator("#heads-head input").input_value()
        if tab == "neurons":
            shown["neuron"] = _wait(page, "#neurons-neuron-info", "neuron 5")
            shown["words"] = page.locator("#neurons-words").inner_text()
        if tab == "segmentation":
            shown["controls"] = [page.locator(f"#segmentation-{name} input").first.input_value()
                                 for name in ("method", "compare", "image-id")]
            shown["threshold"] = page.locator("#segmentation-threshold input[type=number]").input_value()
            shown["rule"] = page.locator("#segmentation-rule input:checked").get_attribute("value")
            page.locator("#segmentation-cite-panel").get_by_text("Cite / reproduce").click()
            shown["cite"] = _wait(page, "#segmentation-cite", "python -m core segment", timeout=30_000)
        if tab == "adversarial":
            shown["controls"] = [page.locator(f"#adversarial-{name} input, #adversarial-{name} textarea").first.input_value()
                                 for name in ("model", "present", "target", "images", "repeats")]
            page.click("#adversarial-run")
            shown["main"] = _wait(page, "#adversarial-info", "Counts (second-order")
            shown["success"] = _wait(page, "#adversarial-success", "similar words")
        page.screenshot(path=str(ARTIFACTS / f"link-{tab}.png"), full_page=True)
        return shown
    finally:
        context.close()


def test_links_restore_every_tab_with_its_numbers_and_again_after_a_restart(app_url, browser, cache):
    from core.explorer.decomposition import decompose
    from core.explorer.heads import head_texts
    from core.explorer.neurons import discover_concepts

    ARTIFACTS.mkdir(exist_ok=True)
    first = {tab: _open_link(browser, app_url, tab) for tab in LINKS}
    # decomposition: the view of layer 3 head 1, the same cosines as the library
    view = decompose("toy", None, "example:0", "a green cross\na red circle", "paper")
    shown = first["decomposition"]
    for i in range(2):
        assert f"{float(view.result.cosine[i]) * 100:+.3f}" in shown["main"]
    assert (shown["layer"], shown["head"]) == ("3", "1") and "layer 3, head 1" in shown["main"]
    assert view.table[0]["component"] in shown["table"]
    assert "Ignored the unknown link parameter 'colour'" in shown["notice"]
    for tab, bogus in (("decomposition", "colour"), ("heads", "zoom"), ("neurons", "x="), ("segmentation", "bogus"),
                       ("adversarial", "zzz")):
        assert bogus not in first[tab]["url"] and bogus.rstrip("=") in first[tab]["notice"], tab  # canonical link
    # heads: the shipped bases' texts of L3H1, and the image's heads
    texts = head_texts("toy", 3, 1)
    assert texts.rows[0]["text"] in first["heads"]["texts"] and first["heads"]["head"] == "1"
    assert "example 2" in first["heads"]["main"]
    # neurons: the concepts of example 0
    _, words, _ = discover_concepts("toy", None, 2, None, "example:0", 10)
    assert words[0]["word"] in first["neurons"]["words"]
    _check_segmentation(first["segmentation"])
    _check_adversarial(first["adversarial"])
    # a new server process: the state lived in the link, the numbers are identical
    with app_server(ROOT / "app.py", _env(cache)) as again:
        for tab in LINKS:
            second = _open_link(browser, again, tab)
            assert second["main"] == first[tab]["main"], tab


def _check_segmentation(shown: dict) -> None:
    """The linked segmentation's cosines and IoUs are the library's, computed here directly."""
    from core.engine.models import load_clip
    from core.links.images import image_from_ref
    from core.segmentation.segment import iou, segment_image, world_truth

    texts = ["a green cross", "a red circle", "a pink background"]
    image = image_from_ref("example:0")
    truth, name = world_truth(image)
    assert name in shown["main"] and "Ignored the unknown link parameter 'bogus'" in shown["notice"]
    assert shown["controls"] == ["heads", "rollout", "example:0"] and float(shown["threshold"]) == 0.5
    assert shown["rule"] == "the slider" and "S > 0.5" in shown["main"]
    rows = {cells[0].strip(): [c.strip() for c in cells[1:]]  # the IoU table: text, IoU heads, IoU rollout
            for cells in (line.split("\t") for line in shown["main"].splitlines()) if len(cells) == 3}
    for column, method in enumerate(("heads", "rollout")):
        result = segment_image(load_clip("toy"), image, texts, method=method)
        if method == "heads":
            for text, cosine in zip(texts, result.cosine):
                assert f"{text} {cosine:+.3f}" in shown["main"]
        for i, text in enumerate(texts):
            assert rows[text][column] == f"{iou(result.masks(0.5)[i], truth):.3f}", (method, text, rows)
    assert "python -m core segment --model toy" in shown["cite"] and "--method rollout" in shown["cite"]


def _check_adversarial(shown: dict) -> None:
    """The restored settings, and Generate's success rates equal a direct run of the library."""
    from core.adversarial.pipeline import AdversarialConfig, run_adversarial
    from core.engine.models import load_clip

    assert shown["controls"] == ["toy-biased", "square", "triangle", "12", "2"]
    assert "Ignored the unknown link parameter 'zzz'" in shown["notice"]
    report = run_adversarial(load_clip("toy-biased"), AdversarialConfig(
        "square", "triangle", images=12, repeats=2, seed=3, baselines=True, similarity_model="toy", layers=(1, 2),
        block=("red", "blue")))
    for method, row in report.summary().items():
        assert ", ".join(f"{s}/{v}" for s, v in zip(row["successes"], row["valid_images"])) in shown["success"], method
    assert f"successes {report.stage_counts()['successes']}" in shown["main"]


def test_copy_link_reopens_the_same_view(app_url, browser):
    context, page = _page(browser, permissions=["clipboard-read", "clipboard-write"])
    try:
        page.goto(app_url + "?tab=heads")
        page.get_by_role("tab", name="Heads").click()
        page.fill("#heads-layer input", "2")
        page.fill("#heads-head input", "3")
        page.click("#heads-show")
        info = _wait(page, "#heads-info", "Head L2H3")
        page.wait_for_function("() => location.search.includes('layer=2&head=3')", timeout=30_000)
        page.click("#heads-copy")
        page.locator("#heads-copied").get_by_text("Copied").wait_for(timeout=10_000)
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied.startswith(app_url) and "tab=heads" in copied and "layer=2&head=3" in copied
        page.locator("#heads-cite-panel").get_by_text("Cite / reproduce").click()
        cite = _wait(page, "#heads-cite", "python -m core bases info", timeout=30_000)
        assert "arxiv.org/abs/2310.05916" in cite and "layer=2&head=3" in cite
    finally:
        context.close()
    context, page = _page(browser)
    try:
        page.goto(copied)
        assert _wait(page, "#heads-info", "Head L2H3") == info
    finally:
        context.close()


@contextmanager
def static_site(folder: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_app_embedded_with_a_deep_link(app_url, browser, tmp_path):
    """docs/deploy.md's snippets: a <gradio-app> web component and an iframe, each with a deep link."""
    html = urllib.request.urlopen(app_url, timeout=30).read().decode()
    script = re.search(r'src="\./(assets/index-[^"]+\.js)"', html)[1]  # offline: the app serves its own bundle
    (tmp_path / "embed.html").write_text(
        f'<!doctype html><html><head><script type="module" src="{app_url}{script}"></script></head><body>'
        f'<h1 class="host">A page that embeds clipscope</h1>'
        f'<gradio-app src="{app_url}{LINKS["heads"]}"></gradio-app>'
        f'<iframe id="frame" src="{app_url}{LINKS["neurons"]}" width="1300" height="1400" style="border:0"></iframe>'
        "</body></html>")
    with static_site(tmp_path) as site:
        context, page = _page(browser)
        try:
            page.goto(site + "embed.html?utm=1")
            component = page.locator("gradio-app")
            component.locator("#heads-image-info").get_by_text("Heads ranked").wait_for(timeout=180_000)
            assert "example 2" in component.locator("#heads-image-info").inner_text()
            assert component.locator("#heads-head input").input_value() == "1"
            frame = page.frame_locator("#frame")
            frame.locator("#neurons-neuron-info").get_by_text("neuron 5").wait_for(timeout=180_000)
            assert page.url == site + "embed.html?utm=1"  # the host page's address is left alone
            page.screenshot(path=str(ARTIFACTS / "embedded.png"), full_page=True)
        finally:
            context.close()


def test_two_visitors_of_the_heads_tab_never_share_results(app_url, browser):
    first, page_a = _page(browser)
    second, page_b = _page(browser)
    try:
        for page in (page_a, page_b):
            page.goto(app_url + "?tab=heads")
            page.wait_for_selector("#heads-show", timeout=60_000)
        page_a.get_by_text("Compute TextSpan here").click()
        fill_and_settle(page_a.locator("#heads-n-images input[type=number]"), "20")
        page_a.click("#heads-compute")
        computed = _wait(page_a, "#heads-info", "computed here on 20 generated", timeout=300_000)
        assert "computed here on 20 generated" in computed and "200 generated" not in computed
        # visitor B asks for texts computed in their session: there are none, whatever A did
        page_b.get_by_label("computed here").check()
        page_b.click("#heads-show")
        shown = _wait(page_b, "#heads-info", "No TextSpan for this head was computed in this session")
        assert "TextSpan from bases" in shown and "computed here on" not in shown
        # and A still sees their own
        page_a.click("#heads-show")
        assert _wait(page_a, "#heads-info", "computed here on 20 generated") == computed
    finally:
        first.close()
        second.close()
