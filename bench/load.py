"""Benchmark: the whole app under concurrent API clients on loopback; with --heavy and --uploads, its resources.

    python -m bench.load [--clients 8] [--requests 50] [--url http://127.0.0.1:7860/ --pid PID]
    python -m bench.load --heavy --uploads 100          # public mode: budget, memory, slot time and disk

Starts `python app.py` on a free port (or uses --url, with --pid for its memory), then runs N clients in parallel
(one gradio_client.Client each, i.e. one session each), each sending M requests that cycle over every tab's main
endpoint: /decompose, /head_texts, /explain_image, /retrieve, /show_neuron, /concepts, /search_neurons. Prints the
failed requests (with their errors), p50 and p95 latency per endpoint and overall, and the server's resident memory
(VmRSS) after a warm-up round (every endpoint, two clients at once) and after the run. Targets: 0 failed, RSS growth under 10%.

--heavy (public mode): the heaviest requests core.budget admits on the toy models (Neurons statistics: the most
scenes at k = 100 and the largest k; TextSpan over the most images; an adversarial run of 100 images x 3 repeats with
baselines), each alone and the two statistics requests at once; prints the server's peak RSS growth and each
request's seconds (wall and server CPU) as ratios of the targets: 1.5 GB and 60 s.
--uploads N (public mode): N uploads (~1.1 MB each, N > 45 makes more than 50 MB) spread over 4 sessions, each used
by a /decompose request; once every session has closed, the server's temporary folder must come back within 50 MB
of its size before the run (bench start, after the warm-up). The server started here gets its own TMPDIR.
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


def start_server(port: int, public: bool = False, tmp: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if public:
        env.update(CLIPSCOPE_PUBLIC="1", CLIPSCOPE_MODELS="toy,toy-biased")
    if tmp is not None:
        env.update(TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "gradio"), CLIPSCOPE_CACHE=str(tmp.parent / "cache"))
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
    client.close()  # the session ends: its files go


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


# ---------------------------------------------------------------- server resources (--heavy, --uploads)

RSS_TARGET_MB, SLOT_TARGET_S, DISK_TARGET_MB = 1500.0, 60.0, 50.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def folder_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


class Peak:
    """Peak RSS of the server (sampled every 50 ms), wall and server CPU seconds while a block runs."""

    def __init__(self, pid: int):
        self.pid, self.stop = pid, threading.Event()

    def __enter__(self):
        self.start = self.peak = children_rss_mb(self.pid)
        self.cpu, self.wall = cpu_seconds(self.pid), time.perf_counter()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, children_rss_mb(self.pid))
            except OSError:
                pass

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds(self.pid) - self.cpu


def heavy_requests() -> list[tuple[str, str, dict]]:
    """(name, endpoint, arguments) of the heaviest requests core.budget admits in public mode on the toy models."""
    from core import budget, settings
    from core.engine.models import load_clip
    from core.explorer.access import MAX_WORLD_SCENES
    from core.guards import PUBLIC_MAX_SCENES

    import core.world  # noqa: F401  (the world image generator)

    with settings.overridden(public=True):
        toy = load_clip("toy")

        bound = min(MAX_WORLD_SCENES, PUBLIC_MAX_SCENES)  # the tab's and the image set's

        def most_scenes(k: int) -> int:  # the most scenes the budget admits at this k (0: none)
            return budget.neuron_statistics(toy, images=bound, k=k, texts=291).fits["images"] or 0

        longest = most_scenes(100)
        k = max(k for k in range(100, 1001, 25) if most_scenes(k) > k)
        scenes = most_scenes(k)
    base = dict(spec="toy", layer=2, source="generated world", folder="", pool_file=None, pool_path="",
                dictionary="normalise_texts")
    return [
        (f"neurons n={longest} k=100", "/compute_bases", dict(base, n_scenes=longest, k=100)),
        (f"neurons n={scenes} k={k}", "/compute_bases", dict(base, n_scenes=scenes, k=k)),
        ("textspan n=2000", "/compute_textspan", dict(spec="toy", source="generated world (held-out scenes)",
                                                      folder="", uploads=None, n_images=2000, per_head=40,
                                                      pool_file=None, layer=3, head=1)),
        ("adversarial 100x3+baselines", "/generate", dict(args=("toy-biased", "square", "triangle", "", None, 5, 0.9,
                                                                 "world", 100, 3, True, 0, "", "", "", ""))),
    ]


def call(url: str, endpoint: str, kwargs: dict) -> str:
    from gradio_client import Client

    client = Client(url, verbose=False)
    kwargs = dict(kwargs)
    try:
        client.predict(*kwargs.pop("args", ()), api_name=endpoint, **kwargs)
        return "ok"
    except Exception as err:  # noqa: BLE001 - the outcome is reported, whatever it is
        return f"{type(err).__name__}: {str(err)[:120]}"
    finally:
        client.close()


def heavy(url: str, pid: int) -> None:
    cases = heavy_requests()
    print(f"\nheaviest admitted requests (public mode), targets: RSS growth < {RSS_TARGET_MB:.0f} MB, "
          f"slot < {SLOT_TARGET_S:.0f} s")
    print(f"{'request':34s} {'RSS +MB':>8s} {'ratio':>6s} {'wall s':>7s} {'ratio':>6s} {'cpu s':>6s}  outcome")

    def line(name, peak, seconds, outcome):
        print(f"{name:34s} {peak.peak - peak.start:8.0f} {(peak.peak - peak.start) / RSS_TARGET_MB:6.2f} "
              f"{seconds:7.1f} {seconds / SLOT_TARGET_S:6.2f} {peak.cpu:6.1f}  {outcome}")

    call(url, "/compute_bases", dict(cases[0][2], n_scenes=30, k=5))  # warm
    for name, endpoint, kwargs in cases:
        with Peak(pid) as peak:
            outcome = call(url, endpoint, kwargs)
        line(name, peak, peak.wall, outcome)
    results: dict = {}

    def run(index, kwargs):
        start = time.perf_counter()
        results[index] = (call(url, "/compute_bases", kwargs), time.perf_counter() - start)

    with Peak(pid) as peak:  # two visitors at once: both statistics requests, on another layer (no cache hit)
        threads = [threading.Thread(target=run, args=(i, dict(cases[i][2], layer=1))) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    line("both neurons requests at once", peak, max(s for _, s in results.values()),
         "; ".join(f"{o} ({s:.1f} s)" for o, s in results.values()))


def uploads(url: str, tmp: Path | None, start_mb: float, n: int, sessions: int = 4) -> None:
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as mine:
        pictures = []
        for index in range(n):
            path = Path(mine) / f"upload-{index}.png"
            Image.fromarray(np.random.default_rng(index).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(path)
            pictures.append(path)
        sent = sum(p.stat().st_size for p in pictures) / 1e6
        clients = [Client(url, verbose=False) for _ in range(sessions)]
        failures = []
        began = time.perf_counter()
        for index, picture in enumerate(pictures):
            try:
                clients[index % sessions].predict(api_name="/decompose", spec="toy", image=handle_file(str(picture)),
                                                  image_id="", texts="a red circle\na blue square", convention="paper")
            except Exception as err:  # noqa: BLE001 - counted
                failures.append(str(err)[:120])
        seconds = time.perf_counter() - began
    during = folder_mb(tmp) if tmp else float("nan")
    for client in clients:
        client.close()
    waited = time.perf_counter()
    after = during
    while tmp and time.perf_counter() - waited < 180:
        time.sleep(2)
        after = folder_mb(tmp)
        if after - start_mb <= DISK_TARGET_MB and not list(tmp.rglob("upload-*.png")):
            break
    print(f"\n{n} uploads ({sent:.0f} MB) over {sessions} sessions, each used by /decompose: {seconds:.1f} s, "
          f"{len(failures)} failed {failures[:3]}")
    if tmp:
        print(f"server temporary folder: {start_mb:.1f} MB at the start, {during:.1f} MB with the sessions open, "
              f"{after:.1f} MB {time.perf_counter() - waited:.0f} s after they closed: "
              f"+{after - start_mb:.1f} MB (ratio {(after - start_mb) / DISK_TARGET_MB:.2f} of the "
              f"{DISK_TARGET_MB:.0f} MB target); uploads left: {len(list(tmp.rglob('upload-*.png')))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--url", help="an app already running (default: start app.py here)")
    parser.add_argument("--pid", type=int, help="its process id, for memory")
    parser.add_argument("--public", action="store_true", help="start the app in public mode")
    parser.add_argument("--heavy", action="store_true", help="the heaviest admitted requests (public mode)")
    parser.add_argument("--uploads", type=int, default=0, metavar="N", help="N uploads, then the disk (public mode)")
    parser.add_argument("--tmp", type=Path, help="the server's temporary folder, with --url (for --uploads)")
    args = parser.parse_args()
    server, tmp, work = None, args.tmp, None
    if args.url:
        url, pid = args.url, args.pid
    else:
        import tempfile

        from tests.browser import free_port

        port = free_port()
        work = tempfile.TemporaryDirectory(prefix="bench-load-")
        tmp = Path(work.name) / "tmp"
        tmp.mkdir()
        server = start_server(port, public=args.public or args.heavy or bool(args.uploads), tmp=tmp)
        url, pid = f"http://127.0.0.1:{port}/", server.pid
    try:
        wait_for(url)
        disk_start = folder_mb(tmp) if tmp else float("nan")  # before any request
        warm_latencies: dict = defaultdict(list)
        warm_failures: list = []
        # Warm-up: every endpoint on both model threads (two clients at once), so caches and each thread's
        # first-use memory are in place before the RSS baseline.
        warm = [threading.Thread(target=client_run, args=(url, i, len(CALLS), warm_latencies, warm_failures))
                for i in range(2)]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
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
        report(args, wall, latencies, failures, warm_failures, before, after)
        if args.heavy and pid:
            heavy(url, pid)
        if args.uploads:
            uploads(url, tmp, disk_start, args.uploads)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if work is not None:
            work.cleanup()


def report(args, wall, latencies, failures, warm_failures, before, after) -> None:
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
