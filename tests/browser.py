"""A real app server on a free localhost port, driven by Debian's headless Chromium via Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_server(script: Path, env_extra: dict[str, str] | None = None, timeout: float = 180.0):
    """Start `python script --port P` and yield its URL once it answers; stop it afterwards."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    log = open(ARTIFACTS.mkdir(exist_ok=True) or ARTIFACTS / f"server-{script.parent.name}-{port}.log", "w")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"app exited early with {process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError(f"app did not answer within {timeout} s; see {log.name}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            yield page
        finally:
            browser.close()


def fill_and_settle(box, value: str, *, settle_ms: int = 350, attempts: int = 5) -> None:
    """Type into a Gradio input (a Playwright locator) and make sure the value stays: on a busy machine an input
    that mounts as its accordion opens can take back its initial value just after the fill."""
    box.wait_for(state="visible", timeout=60_000)
    for _ in range(attempts):
        box.fill(value)
        box.press("Tab")
        kept = True
        for _ in range(3):  # the value must survive a whole second, checked three times
            box.page.wait_for_timeout(settle_ms)
            kept = kept and box.input_value() == value
        if kept:
            return
    raise AssertionError(f"the input kept {box.input_value()!r}, not {value!r}")
