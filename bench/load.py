"""Benchmark: the whole app under concurrent API clients on loopback.

    python -m bench.load [--clients 8] [--requests 50] [--url http://127.0.0.1:7860/ --pid PID]

Starts `python app.py` on a free port (or uses --url, with --pid for its memory), then runs N clients in parallel
(one gradio_client.Client each, i.e. one session each), each sending M requests that cycle over every tab's main
endpoint: /decompose, /head_texts, /explain_image, /retrieve, /show_neuron, /concepts, /search_neurons. Prints the
failed requests (with their errors), p50 and p95 latency per endpoint and overall, and the server's resident memory
(VmRSS) after a warm-up round and after the run. Targets: 0 failed, RSS growth under 10%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (endpoint, keyword arguments): every tab's main view, on the toy model and generated images.
CALLS = [
    ("/decompose", dict(spec="toy", image=None, image_id="example:{i}", texts="a red circle\na green cross",
                        convention="paper")),
    ("/head_texts", dict(spec="toy", layer="{layer}", head="{head}", bases="", prefer="bases")),
    ("/explain_image", dict(spec="toy", image=None, image_id="example:{i}", texts="a red circle\na blue square",
                            layer=3, head="{head}", pool_file=None, convention="paper", scale="shared")),
    ("/retrieve", dict(spec="toy", image=None, image_id="example:{i}", layer=3, head="{head}",
                       source="generated world (held-out scenes)", folder="", uploads=None, k=5, metric="cosine",
                       convention="paper")),
    ("/show_neuron", dict(spec="toy", bases="", layer=2, neuron="{neuron}")),
    ("/concepts", dict(spec="toy", bases="", layer=2, image=None, image_id="example:{i}", top=5, threshold=1.0)),
    ("/search_neurons", dict(spec="toy", bases="", layer=2, text="a red circle", top=5)),
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_rss_mb(pid: int) -> float:
    """RSS of the server and its child processes (Gradio may start helpers)."""
    total = rss_mb(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            try:
                total += rss_mb(int(cpid))
            except OSError:
                pass
    return total


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "test-artifacts" / "bench-load-server.log", "w")
    return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)


def wait_for(url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def request(n: int) -> tuple[str, dict]:
    endpoint, kwargs = CALLS[n % len(CALLS)]
    values = {"i": n % 6, "layer": 2 + n % 2, "head": n % 4, "neuron": n % 64}
    return endpoint, {k: (v.format(**values) if isinstance(v, str) else v) for k, v in kwargs.items()}


def client_run(url: str, index: int, n_requests: int, latencies: dict, failures: list) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    for r in range(n_requests):
        endpoint, kwargs = request(index * 7 + r)
        kwargs = {k: (int(v) if k in ("layer", "head", "neuron") else v) for k, v in kwargs.items()}
        start = time.perf_counter()
        try:
            client.predict(api_name=endpoint, **kwargs)
            latencies[endpoint].append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - a benchmark counts every failure, whatever its kind
            failures.append(f"client {index} request {r} {endpoint}: {type(err).__name__}: {str(err)[:200]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--url", help="an app already running (default: start app.py here)")
    parser.add_argument("--pid", type=int, help="its process id, for memory")
    args = parser.parse_args()
    server = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        from tests.browser import free_port

        port = free_port()
        server = start_server(port)
        url, pid = f"http://127.0.0.1:{port}/", server.pid
    try:
        wait_for(url)
        warm_latencies: dict = defaultdict(list)
        warm_failures: list = []
        client_run(url, 0, len(CALLS), warm_latencies, warm_failures)  # every endpoint once: caches filled
        before = children_rss_mb(pid) if pid else float("nan")
        latencies: dict = defaultdict(list)
        failures: list = []
        threads = [threading.Thread(target=client_run, args=(url, i, args.requests, latencies, failures))
                   for i in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        after = children_rss_mb(pid) if pid else float("nan")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    total = args.clients * args.requests
    every = [t for values in latencies.values() for t in values]
    print(f"{args.clients} clients x {args.requests} requests = {total} requests in {wall:.1f} s "
          f"({total / wall:.1f} requests/s)")
    print(f"failed requests: {len(failures)} (warm-up: {len(warm_failures)})")
    for line in (warm_failures + failures)[:20]:
        print(f"  {line}")
    print(f"{'endpoint':18s} {'n':>5s} {'p50 s':>8s} {'p95 s':>8s}")
    for endpoint, _ in CALLS:
        values = latencies.get(endpoint, [])
        print(f"{endpoint:18s} {len(values):5d} {percentile(values, 0.5):8.3f} {percentile(values, 0.95):8.3f}")
    print(f"{'all':18s} {len(every):5d} {percentile(every, 0.5):8.3f} {percentile(every, 0.95):8.3f}"
          f"  (median of all {statistics.median(every) if every else float('nan'):.3f})")
    growth = (after - before) / before if before == before and before else float("nan")
    print(f"server RSS: {before:.0f} MB after warm-up, {after:.0f} MB after the run: growth {100 * growth:+.1f}% "
          f"(target < 10%)")


if __name__ == "__main__":
    main()
