"""What every benchmark shares: peak memory of one call, CPU next to wall time, and the machine it ran on.

Memory. CPU tensors live in the process's resident set. `fresh_peak` resets the kernel's resident
high-water mark (VmHWM, `/proc/self/clear_refs` = 5) right before a call and reads it right after, so the
peak is exact (no sampling) and excludes whatever the process peaked at before (model loading). A process
that already ran a larger call keeps freed heap pages (glibc's dynamic mmap threshold), which hides
temporaries: benchmarks therefore measure one configuration per fresh subprocess (`run_child`).

Time. `timed` returns wall and CPU seconds (this process, all threads; plus its finished children when
asked): on a shared machine the CPU time is the steadier measure of cost, and wall / CPU shows contention.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _status_kib(field: str) -> int | None:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def fresh_peak(fn, *args, **kwargs):
    """Run fn; return (result, peak resident bytes during the call, resident bytes before it).

    Exact where the high-water mark can be reset; otherwise sampled every 2 ms (`peak_rss`)."""
    import gc

    gc.collect()
    if not reset_peak():
        return peak_rss(fn, *args, **kwargs)
    before = rss_bytes()
    result = fn(*args, **kwargs)
    peak = _status_kib("VmHWM") * 1024
    return result, max(peak, before), before


def peak_rss(fn, *args, interval: float = 0.002, **kwargs):
    """Run fn; return (result, peak RSS in bytes sampled while it runs, RSS before it)."""
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn(*args, **kwargs)
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return result, peak[0], before


def cpu_seconds(children: bool = False) -> float:
    """CPU seconds (user + system) of this process, all threads; with `children`, plus its waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    if children:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += usage.ru_utime + usage.ru_stime
    return total


def timed(fn, *args, sync=None, **kwargs):
    """(result, wall seconds, CPU seconds of this process) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    if sync is not None:
        sync()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def machine() -> dict:
    """Date, CPU model, usable cores and the load average: printed with every figure."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"), "cpu": model,
            "cores": len(os.sched_getaffinity(0)), "load": os.getloadavg()}


def describe(info: dict | None = None) -> str:
    info = info or machine()
    load = ", ".join(f"{value:.2f}" for value in info["load"])
    return f"{info['date']}; {info['cpu']}, {info['cores']} usable cores; load average {load} (1, 5, 15 min)"


def load_line() -> str:
    return "load average now: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def run_child(module: str, arguments: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run `python -m module arguments` in a fresh process from the repo root; return the JSON of its last line."""
    result = subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1][:300]}
    return json.loads(result.stdout.strip().splitlines()[-1])
