"""Benchmark: how long `python app.py` takes to serve, and its first tab answer (toy model, loopback).

    python -m bench.app_start [--runs 2] [--timeout 300]          # from the repo root

Each run starts a fresh `python app.py --port P` (toy model, offline) and measures:
  - serve: time from the process start to the first HTTP 200 on `/`, and the server's CPU time by then;
  - ready: when the server says its default model is loaded (it loads in the background once the page is
    served: `ui_common.warm_up`), and its CPU time by then;
  - first answer: the latency of the first /decompose call (a generated example image, two texts), sent once the
    server is ready ("after start"); and in a second server the same call sent the moment `/` answers (the worst
    case: it waits for the background load).
Targets (issue 25): serve <= 8 s on a quiet 2-core machine; the first tab answer after start < 1 s.
Prints the date, CPU, cores and load average: wall times on a shared machine grow with the load, CPU times less.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.memory import describe, load_line, machine

ROOT = Path(__file__).resolve().parents[1]
SERVE_TARGET, ANSWER_TARGET = 8.0, 1.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a running process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decompose(url: str, index: int) -> float:
    from gradio_client import Client

    client = Client(url, verbose=False)
    start = time.perf_counter()
    client.predict(api_name="/decompose", spec="toy", image=None, image_id=f"example:{index}",
                   texts="a red circle\na green cross", convention="paper")
    return time.perf_counter() - start


def one_run(immediate: bool, timeout: float) -> dict:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "CLIPSCOPE_MODEL": "toy"}
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "test-artifacts" / f"bench-app-start-{port}.log", "w")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    out: dict = {}
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"app.py exited with {server.returncode}; see {log.name}")
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"app.py did not serve within {timeout:.0f} s; see {log.name}")
            try:
                if urllib.request.urlopen(url, timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        out["serve"], out["serve_cpu"] = time.perf_counter() - started, cpu_of(server.pid)
        if immediate:
            out["answer"] = decompose(url, 0)
            out["answer_at"] = time.perf_counter() - started
            return out
        while "default model" not in Path(log.name).read_text():  # ui.warm_up's line: the model is loaded
            if time.perf_counter() - started > timeout or server.poll() is not None:
                raise SystemExit(f"the default model never loaded; see {log.name}")
            time.sleep(0.05)
        out["ready"], out["ready_cpu"] = time.perf_counter() - started, cpu_of(server.pid)
        cpu_before = cpu_of(server.pid)
        out["answer"] = decompose(url, 0)
        out["answer_cpu"] = cpu_of(server.pid) - cpu_before
        return out
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="servers started for the 'after start' measurement")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    print(f"bench.app_start: {describe(machine())}; python app.py, toy model, offline")
    for run in range(args.runs):
        result = one_run(False, args.timeout)
        print(f"  run {run + 1}: serve {result['serve']:5.2f} s (server CPU {result['serve_cpu']:5.2f} s) x"
              f"{result['serve'] / SERVE_TARGET:.2f} of {SERVE_TARGET:.0f} s; ready {result['ready']:5.2f} s "
              f"(CPU {result['ready_cpu']:5.2f} s); first /decompose answer after start {result['answer']:5.2f} s "
              f"(server CPU {result['answer_cpu']:.2f} s) x{result['answer'] / ANSWER_TARGET:.2f} of {ANSWER_TARGET:.0f} s")
        print(f"     {load_line()}")
    result = one_run(True, args.timeout)
    print(f"  worst case, /decompose sent the moment / answers: serve {result['serve']:5.2f} s, answer "
          f"{result['answer']:5.2f} s later (at {result['answer_at']:5.2f} s)")
    print(f"     {load_line()}")


if __name__ == "__main__":
    main()
