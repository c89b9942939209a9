"""Benchmark: the first answer from a deep link, on the toy model (target: under 2 s on 2 CPU cores).

    python -m bench.links [--repeats 5] [--no-browser]

1. The server side: `core.explorer.<tab>.open_link(query)` for each tab's link, with the model loaded (the app
   loads it at start-up): the first call (nothing cached yet but the model) and the median of the repeats.
2. End to end: the real app (`python app.py`) in headless Chromium; for each tab a new browser context opens the
   link, and the time runs from navigation to the linked view's numbers on screen (page load included).
Prints each time and its ratio to the 2 s target. The adversarial tab's first answer is its restored settings and
the notice to press Generate (a run draws hundreds of images: seconds, so a link never starts one by itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

TARGET = 2.0
LINKS = {
    "decomposition": "tab=decomposition&model=toy&layer=3&head=1&text=a+green+cross&text=a+red+circle"
                     "&image=example:0&convention=paper",
    "heads": "tab=heads&model=toy&layer=3&head=1&text=a+white+cross&text=a+pink+background&image=example:2"
             "&convention=paper&method=cosine",
    "neurons": "tab=neurons&model=toy&layer=2&neuron=5&text=a+red+circle&image=example:0&threshold=1.0",
    "segmentation": "tab=segmentation&model=toy&text=a+green+cross&text=a+red+circle&image=example:0&method=heads"
                    "&threshold=0.5&background=a+pink+background&compare=rollout",
    "adversarial": "tab=adversarial&model=toy-biased&text=square&text=triangle&method=world&images=100&repeats=3"
                   "&baselines=yes&judge=toy",
}
SHOWN = {"decomposition": ("#decomposition-info", "Reconstruction error"),
         "heads": ("#heads-image-info", "Heads ranked"),
         "neurons": ("#neurons-concepts-info", "activated neurons"),
         "segmentation": ("#segmentation-info", "IoU rollout"),
         "adversarial": ("#adversarial-notice", "press Generate")}


def server_side(repeats: int) -> dict[str, tuple[float, float]]:
    import importlib

    from core.engine.models import load_clip

    load_clip("toy")  # as the app does at start-up
    times = {}
    for tab, query in LINKS.items():
        module = importlib.import_module(f"core.explorer.{tab}")
        runs, cpus = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            linked = module.open_link(query, default_tab=tab)
            runs.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
            assert linked.view is not None or (tab == "adversarial" and linked.link is not None), linked.notice
        times[tab] = (runs[0], statistics.median(runs), cpus[0])
    return times


def end_to_end() -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, app_server

    times = {}
    with app_server(ROOT / "app.py", {"CLIPSCOPE_MODEL": "toy"}) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        warm = browser.new_page()
        warm.goto(url)  # the server's first page (fonts, assets) is not a link's cost
        warm.wait_for_selector("#decomposition-run", timeout=120_000)
        warm.close()
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#decomposition-run", timeout=120_000)
        times["page without a link"] = time.perf_counter() - start
        context.close()
        for tab, query in LINKS.items():
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            selector, text = SHOWN[tab]
            start = time.perf_counter()
            page.goto(f"{url}?{query}")
            page.locator(selector).get_by_text(text).first.wait_for(timeout=120_000)
            times[tab] = time.perf_counter() - start
            context.close()
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="only the server side")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from bench.memory import describe, load_line, machine

    print(f"bench.links: {describe(machine())}")
    print(f"first answer from a deep link, toy model, target {TARGET:.0f} s (server: wall, and the first call's CPU)")
    print(f"{'tab':14s} {'server: first':>14s} {'cpu':>7s} {'median':>8s} {'ratio':>6s}   {'browser: link to numbers':>24s} "
          f"{'ratio':>6s} {'after the page':>15s}")
    server = server_side(args.repeats)
    browser = {} if args.no_browser else end_to_end()
    for tab in LINKS:
        first, median, first_cpu = server[tab]
        shown = browser.get(tab, float("nan"))
        page = browser.get("page without a link", float("nan"))
        print(f"{tab:14s} {first:12.2f} s {first_cpu:5.2f} s {median:6.2f} s {median / TARGET:5.2f}x   {shown:22.2f} s "
              f"{shown / TARGET:5.2f}x {shown - page:13.2f} s")
    print(load_line())
    if "page without a link" in browser:
        print(f"(the page alone, without a link, shows its first button after {browser['page without a link']:.2f} s)")


if __name__ == "__main__":
    main()
