"""Benchmark: direct-effect decomposition vs a plain encode_image (ViT-B-16, random init, CPU).

    python -m bench.decompose [--spec ViT-B-16/none] [--batches 1 8] [--repeats 3] [--texts 10] [--device cpu]

Prints the time per image of: a plain forward, the non-spatial decomposition (trace + all
layer/head/MLP terms), the spatial decomposition projected onto `--texts` text directions
(every layer x head x token x text score), and the literal per-token implementation for one image;
then ratios against the plain forward, and each mode's extra peak memory (RSS sampled while it runs,
over the RSS before it) and total peak RSS. Targets: non-spatial <= 1.3x, spatial (10 texts) <= 2x,
spatial peak memory <= 1.5x a plain forward's.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from bench.memory import peak_rss
from core.engine.contributions import direct_effects, fold_weights
from core.engine.models import load_clip
from core.engine.reference import literal_direct_effects
from core.engine.trace import trace_vit
from core.settings import resolve_device


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="ViT-B-16/none")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-literal", action="store_true")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $CLIPSCOPE_DEVICE or auto)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_clip(args.spec, device=resolve_device(args.device))
    visual = bundle.model.visual
    folded = fold_weights(visual)
    directions = torch.nn.functional.normalize(torch.randn(args.texts, bundle.info.d_out), dim=-1).to(bundle.device)
    print(f"model {bundle.info.display_name} on {bundle.device}; torch {torch.__version__}, {args.threads} threads; "
          f"best of {args.repeats} (peak memory is the process RSS, host memory only)")

    def plain(x):
        with torch.inference_mode():
            return bundle.model.encode_image(x)

    def non_spatial(x):
        return direct_effects(trace_vit(visual, x), folded).total()

    def spatial(x):
        return direct_effects(trace_vit(visual, x, keep_values=True), folded, spatial=True, directions=directions).tokens

    for batch in args.batches:
        x = torch.randn(batch, 3, bundle.info.image_size, bundle.info.image_size).to(bundle.device)
        results = {}
        for name, fn in (("plain encode_image", plain), ("non-spatial decomposition", non_spatial),
                         (f"spatial decomposition, {args.texts} texts", spatial)):
            fn(x)  # warm up
            seconds = best_time(lambda: fn(x), args.repeats)
            gc.collect()
            _, peak, before = peak_rss(fn, x)
            results[name] = (seconds, peak - before, peak)
        base_time, base_extra, base_peak = results["plain encode_image"]
        print(f"\nbatch {batch}")
        for name, (seconds, extra, peak) in results.items():
            print(f"  {name:34s} {1000 * seconds / batch:8.1f} ms/image  x{seconds / base_time:5.2f} time   "
                  f"extra peak {extra / 2**20:7.1f} MiB  total peak {peak / 2**20:7.0f} MiB (x{peak / base_peak:4.2f})")
    if not args.skip_literal:
        x = torch.randn(1, 3, bundle.info.image_size, bundle.info.image_size).to(bundle.device)
        start = time.perf_counter()
        literal_direct_effects(visual, x[0])
        literal = time.perf_counter() - start
        fast = best_time(lambda: spatial(x), args.repeats)
        print(f"\nliteral per-token implementation (full d_out vectors): {literal:.1f} s/image; "
              f"spatial fast path {fast * 1000:.0f} ms -> {literal / fast:.0f}x faster")


if __name__ == "__main__":
    main()
