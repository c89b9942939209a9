"""A real public-mode app.py for the server-resource tests: its process (for /proc memory), its log, its temporary
folder (TMPDIR and GRADIO_TEMP_DIR point inside one folder, so what it leaves on disk can be measured)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.browser import ARTIFACTS, ROOT, free_port


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    tmp: Path  # the server's temporary folder (uploads, Gradio's cache, session folders)
    cache: Path

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def public_server(tmp: Path, cache: Path, env: dict | None = None, timeout: float = 300.0):
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"server-hardening-{port}.log"
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "CLIPSCOPE_PUBLIC": "1",
                "CLIPSCOPE_MODELS": "toy,toy-biased", "CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(cache),
                "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"), **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT,
                                   env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"app did not answer within {timeout} s; see {log}") from None
                time.sleep(0.5)
        yield Server(url, process, log, tmp, cache)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class PeakMemory:
    """The peak resident memory of a process while a block runs, sampled every 50 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.start, self.seconds = pid, 0.0, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._began = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._began
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))

    @property
    def growth_mb(self) -> float:
        return self.peak - self.start
