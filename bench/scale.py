"""Benchmark: bases-build throughput at 1 and 2 processes (torchrun, gloo, CPU), merge cost, and GPU throughput.

    python -m bench.scale [--images 256] [--vit-images 48] [--skip-vit]       # from the repo root
    python -m bench.scale --gpu [--gpu-models ViT-B-16/none ViT-L-14/none] [--batch 64]

CPU section (always): `python -m core bases build` on the toy model (world scenes) and on a random
ViT-B-32 (`ViT-B-32/none`, the same scenes resized to 224 px), as one process (all cores) and as
`torchrun --standalone --nproc_per_node 2` (one thread each, as torchrun sets). Each run is a fresh
subprocess; "build" is rank 0's time from the first shard to the finalised artifact (no launch, no
model load), "wall" includes both. Prints images/s, the 2-process / 1-process ratio and the merge
cost (the pass-1 slot reductions plus the cross-rank top-k merge) as a share of the build time.
Target: merge under 5% of the build on the toy model. Also one forward pass of ViT-B-32 for scale:
the build's cost per image divided by a forward's (both one thread) is the factor docs/bases.md uses to
extrapolate GPU-hours. The single process uses one thread (`--all-threads` adds a run with every core's).

GPU section (`--gpu`, needs CUDA; `--device cpu` runs the same code on small models to check it):
per model, random weights, batch 64, images/s for a plain forward, the non-spatial decomposition
(trace + direct effects), the spatial decomposition onto 10 texts, the second-order effects of one
layer, and a full bases build (one process over --gpu-images world scenes, shards of 4 batches).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_cmd(model: str, images: int, out: Path, shard: int, batch: int, k: int) -> list[str]:
    # 8 sparse terms: OMP is a fixed cost on rank 0 (independent of images and processes); keep it small
    return ["bases", "build", "--model", model, "--images", f"world:{images}:1", "--texts", "toy", "--out", str(out),
            "--shard-size", str(shard), "--batch-size", str(batch), "--k", str(k), "--terms", "8", "--device", "cpu"]


def run_build(model: str, images: int, processes: int, cache: Path, shard: int, batch: int, k: int,
              threads: int | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="scale-")) / "bases"
    env = {**os.environ, "CLIPSCOPE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process
    else:
        launch = [sys.executable]
    started = time.perf_counter()
    result = subprocess.run(launch + ["-m", "core"] + _build_cmd(model, images, out, shard, batch, k), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"build failed ({model}, {processes} processes):\n{result.stderr[-3000:]}")
    seconds = json.loads(re.search(r"seconds \(rank 0\): (\{.*\})", result.stderr).group(1))
    build = sum(seconds.values())
    merge = seconds.get("merge1", 0.0) + seconds.get("merge2", 0.0)
    passes = build - seconds["finish"]  # the part that scales with images and processes
    return {"model": model, "processes": processes, "threads": threads or "all", "images": images, "wall_s": wall,
            "build_s": build, "merge_s": merge, "passes_s": passes, "images_per_s": images / passes,
            "merge_share": merge / build, "merge_share_passes": merge / passes, "seconds": seconds}


def forward_seconds_per_image(model: str, batch: int = 16, repeats: int = 2) -> float:
    import torch

    from core.engine.models import load_clip

    torch.set_num_threads(1)  # compared with the 1-thread build
    bundle = load_clip(model)
    pixels = torch.randn(batch, 3, bundle.info.image_size, bundle.info.image_size)
    with torch.inference_mode():
        bundle.model.visual(pixels)
        started = time.perf_counter()
        for _ in range(repeats):
            bundle.model.visual(pixels)
    return (time.perf_counter() - started) / (repeats * batch)


# Image towers at 224 px: (width, layers, tokens incl. class, patch); MLP 4x width.
TOWERS = {"ViT-B-16": (768, 12, 197, 16), "ViT-L-14": (1024, 24, 257, 14), "ViT-H-14": (1280, 32, 257, 14)}
IMAGENET_VAL = 50_000
GPU_FP32_FLOPS = 67e12  # H100/H200 SXM FP32 (no TF32: PyTorch's default for float32 matmuls)
GPU_UTILISATION = 0.5


def forward_flops(width: int, layers: int, tokens: int, patch: int) -> float:
    """2 x multiply-adds of one image's forward: qkv + out-proj + MLP (12 w^2 per token), attention (2 t^2 w)."""
    per_layer = 12 * width**2 * tokens + 2 * tokens**2 * width
    return 2.0 * (layers * per_layer + (tokens - 1) * 3 * patch**2 * width)


def extrapolate(factor: float) -> None:
    """GPU-hours for ImageNet-val bases, EXTRAPOLATED (not measured): images x factor x forward FLOPs at
    GPU_UTILISATION of the FP32 peak. factor: the build's cost per image in forwards, measured on the CPU."""
    print(f"EXTRAPOLATED, not measured: ImageNet-val ({IMAGENET_VAL:,} images) bases, the two image passes at "
          f"{factor:.1f} forwards per image (measured on the CPU), {GPU_UTILISATION:.0%} of "
          f"{GPU_FP32_FLOPS / 1e12:.0f} TFLOP/s FP32 (one H100/H200):")
    for name, tower in TOWERS.items():
        flops = forward_flops(*tower)
        seconds = IMAGENET_VAL * factor * flops / (GPU_FP32_FLOPS * GPU_UTILISATION)
        print(f"  {name}: forward {flops / 1e9:.0f} GFLOP/image -> {seconds / 3600:.2f} GPU-hours "
              f"({IMAGENET_VAL * 2 / seconds:.0f} images/s per pass needed from the image decoders)")


def cpu_section(args) -> None:
    cache = Path(tempfile.mkdtemp(prefix="scale-cache-"))
    rows = []
    plans = [("toy", args.images, 256, 32, 100 if args.images >= 100 else 16)]
    if not args.skip_vit:
        plans.append(("ViT-B-32/none", args.vit_images, 8, 8, 8))
    for model, images, shard, batch, k in plans:
        configs = ((1, 1), (1, None), (2, None)) if args.all_threads else ((1, 1), (2, None))
        for processes, threads in configs:  # torchrun gives each of 2 processes 1 thread
            rows.append(run_build(model, images, processes, cache, shard, batch, k, threads))
            r = rows[-1]
            print(f"{model:14s} {processes} process(es), threads {r['threads']}: {r['images_per_s']:7.2f} images/s "
                  f"through the two passes + merges ({r['passes_s']:.1f} s; whole build {r['build_s']:.1f} s with the "
                  f"fixed finish {r['seconds']['finish']:.1f} s; wall {r['wall_s']:.1f} s incl. launch and model load); "
                  f"merge {r['merge_s']:.3f} s = {100 * r['merge_share']:.2f}% of the build, "
                  f"{100 * r['merge_share_passes']:.2f}% of the passes; {r['seconds']}", flush=True)
        single = max(rows[-len(configs):-1], key=lambda r: r["images_per_s"])
        two = rows[-1]
        print(f"{model:14s} 2 processes / best single process ({single['threads']} threads): "
              f"{two['images_per_s'] / single['images_per_s']:.2f}x images/s", flush=True)
    toy_merge = max(r["merge_share"] for r in rows if r["model"] == "toy" and r["processes"] == 2)
    print(f"merge cost on the toy model at 2 processes: {100 * toy_merge:.2f}% of the build "
          f"(target < 5%: {'met' if toy_merge < 0.05 else 'NOT met'})")
    if not args.skip_vit:
        vit = next(r for r in rows if r["model"] == "ViT-B-32/none" and r["processes"] == 1 and r["threads"] == 1)
        forward = forward_seconds_per_image("ViT-B-32/none")
        factor = (1 / vit["images_per_s"]) / forward
        print(f"ViT-B-32 forward (1 thread): {1 / forward:.2f} images/s; the bases build's two passes cost "
              f"{factor:.1f} forwards per image (docs/bases.md's extrapolation factor)")
        extrapolate(factor)


def gpu_section(args) -> None:
    import torch

    import core.world  # noqa: F401  (registers world:N)
    from core.distributed.bases import BasesPlan, build_bases
    from core.engine.contributions import direct_effects, fold_weights, spatial_value_maps
    from core.engine.models import load_clip
    from core.engine.text import encode_texts
    from core.engine.trace import trace_vit
    from core.engine.imagesets import parse_image_set
    from core.heads.outputs import default_heads
    from core.neurons.bases import BuildOptions
    from core.neurons.second_order import second_order_basis, second_order_effects
    from core.world.scenes import load_toy_texts

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (or pass --device cpu to check the code on small models)")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def rate(step, batch, repeats=args.repeats) -> float:
        step()
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        sync()
        return repeats * batch / (time.perf_counter() - started)

    texts = load_toy_texts()
    for spec in args.gpu_models:
        bundle = load_clip(spec, device=device)
        visual, info, batch = bundle.model.visual, bundle.info, args.batch
        pixels = torch.randn(batch, 3, info.image_size, info.image_size, device=device)
        folded = fold_weights(visual)
        ten = encode_texts(bundle, texts[:10]).to(device)
        maps = spatial_value_maps(folded, ten)
        layer = max(0, info.n_layers - 3)
        basis = second_order_basis(visual, layer)
        with torch.inference_mode():
            rows = {
                "forward": rate(lambda: visual(pixels), batch),
                "decomposition": rate(lambda: direct_effects(trace_vit(visual, pixels), folded).scores(), batch),
                "spatial onto 10 texts": rate(lambda: direct_effects(trace_vit(visual, pixels, value_maps=maps), folded,
                                                                     spatial=True, directions=ten).scores(), batch),
                f"second-order, layer {layer}": rate(lambda: second_order_effects(
                    trace_vit(visual, pixels, mlp_layers=[layer]), basis), batch),
            }
        image_set = parse_image_set(f"world:{args.gpu_images}:1", generator_split="heldout")
        plan = BasesPlan(heads=default_heads(info), neuron_layers=list(range(max(0, info.n_layers - 4), info.n_layers - 1)),
                         per_head=20, rank=min(80, info.d_out, args.gpu_images), n_terms=24,
                         options=BuildOptions(k=min(100, args.gpu_images), batch_size=batch), shard_size=batch * 4)
        with tempfile.TemporaryDirectory() as tmp:
            report = build_bases(bundle, image_set, texts, Path(tmp) / "bases", plan, pool_name="toy",
                                 work_dir=Path(tmp) / "work")
        rows["bases build (incl. TextSpan, PCs, OMP)"] = report.images / sum(report.seconds.values())
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for what, value in rows.items():
            print(f"{spec:16s} {name}: {what:40s} {value:9.1f} images/s (batch {batch})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="world scenes for the toy model (default 1024)")
    parser.add_argument("--vit-images", type=int, default=24, help="world scenes for ViT-B-32/none (default 24)")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--all-threads", action="store_true",
                        help="also one process with every core's threads (meaningless on a machine shared with other jobs)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU section (needs CUDA unless --device cpu)")
    parser.add_argument("--gpu-models", nargs="+", default=["ViT-B-16/none", "ViT-L-14/none"])
    parser.add_argument("--gpu-images", type=int, default=1024, help="images for the GPU bases build (default 1024)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--extrapolate", type=float, metavar="FACTOR",
                        help="only print the extrapolated GPU-hours for this build cost (forwards per image)")
    args = parser.parse_args()
    if args.extrapolate:
        extrapolate(args.extrapolate)
    elif args.gpu:
        gpu_section(args)
    else:
        cpu_section(args)


if __name__ == "__main__":
    main()
