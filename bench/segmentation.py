"""Benchmark: time per image of each segmentation method vs a plain forward (ViT-B-16, random init, CPU),
and vs the papers' spatial path.

    python -m bench.segmentation [--spec ViT-B-16/none] [--batches 1 8] [--repeats 3] [--classes 1000]

Each method maps the predicted class among `--classes` random unit class texts, as on ImageNet-segmentation
(heads: minus the mean over classes; neurons: the top-200 of layers 8-10 by |<PC, class>|, random PCs
standing in for the bases, which timing does not depend on). Prints ms/image and the ratio to a plain
`encode_image` at the same batch size. Targets: heads <= 1.3x, neurons <= 2x. Then the papers' spatial
path for one image (every layer's [token, token, head, d_model] per-query tensor, `original_spatial_path`)
against the heads map.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from core.engine.models import load_clip
from core.segmentation.methods import METHODS, NeuronPool, Segmenter, Targets
from core.segmentation.reference import original_spatial_path


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds), each the best of `repeats` runs. On a shared machine the CPU time
    (all threads) is the steadier measure of cost; both are printed."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def random_pool(bundle, layers: tuple[int, ...], seed: int = 0) -> NeuronPool:
    generator = torch.Generator().manual_seed(seed)
    d_mlp, d_out = bundle.info.d_mlp, bundle.info.d_out
    pcs = torch.nn.functional.normalize(torch.randn(len(layers) * d_mlp, d_out, generator=generator), dim=-1).double()
    return NeuronPool(layers, torch.tensor(layers).repeat_interleave(d_mlp), torch.arange(d_mlp).repeat(len(layers)),
                      pcs, "random PCs (benchmark)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="ViT-B-16/none")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--skip-original", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_clip(args.spec)
    info = bundle.info
    generator = torch.Generator().manual_seed(1)
    classes = torch.nn.functional.normalize(torch.randn(args.classes, info.d_out, generator=generator), dim=-1)
    layers = tuple(range(max(0, info.n_layers - 4), info.n_layers - 1))  # ViT-B: 8, 9, 10 as in paper 2
    pool = random_pool(bundle, layers)
    print(f"model {info.display_name}; torch {torch.__version__}, {args.threads} threads; best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}; "
          f"{args.classes} classes, predicted class; neurons: top-200 of layers {layers}")

    def plain(x):
        with torch.inference_mode():
            return bundle.model.encode_image(x)

    segmenters = {m: Segmenter(bundle, m, pool=pool if m.endswith("neurons") else None) for m in args.methods}
    heads_time, plain_time = None, None
    for batch in args.batches:
        x = torch.randn(batch, 3, info.image_size, info.image_size, generator=generator)
        plain(x)
        base, base_cpu = best_time(lambda: plain(x), args.repeats)
        if batch == 1:
            plain_time = base_cpu
        print(f"\nbatch {batch}  (wall ms/image, ratio; CPU ms/image, ratio)\n  {'plain encode_image':24s} "
              f"{1000 * base / batch:8.1f}  x 1.00   {1000 * base_cpu / batch:8.1f}  x 1.00")
        for method, segmenter in segmenters.items():
            targets = Targets(classes, None, subtract_mean=method == "heads")
            segmenter(x, targets)  # warm up (neurons: ranks every class's neurons once)
            wall, cpu = best_time(lambda: segmenter(x, targets), args.repeats)
            if method == "heads" and batch == 1:
                heads_time = cpu
            print(f"  {method:24s} {1000 * wall / batch:8.1f}  x{wall / base:5.2f}   {1000 * cpu / batch:8.1f}  "
                  f"x{cpu / base_cpu:5.2f}")
    if not args.skip_original:
        x = torch.randn(1, 3, info.image_size, info.image_size, generator=generator)
        start, start_cpu = time.perf_counter(), time.process_time()
        tokens = original_spatial_path(bundle.model.visual, x[0])
        scores = tokens.sum((0, 1))[1:] @ classes.T  # the papers then project every token on every class
        wall, original = time.perf_counter() - start, time.process_time() - start_cpu
        heads = segmenters.get("heads") or Segmenter(bundle, "heads")
        heads_time = heads_time or best_time(lambda: heads(x, Targets(classes, None, True)), args.repeats)[1]
        plain_time = plain_time or best_time(lambda: plain(x), args.repeats)[1]
        print(f"\npapers' spatial path (per-query [token, token, head, d_model] tensors), one image: {wall:.1f} s wall,"
              f" {original:.1f} s CPU = x{original / plain_time:.0f} a plain forward (batch 1, CPU time); heads map "
              f"{1000 * heads_time:.0f} ms CPU -> {original / heads_time:.0f}x less ({tuple(scores.shape)} token x "
              "class scores)")


if __name__ == "__main__":
    main()
