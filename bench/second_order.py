"""Benchmark: factorised second-order neuron effects vs the paper's literal per-(layer, head) loop.

Setting of the issue: ViT-B-32 (random init, `ViT-B-32/none`), MLP layer 9 (3,072 neurons,
2 later layers x 12 heads), CPU float32. Per image we time
  - a plain forward `visual(images)` (for scale),
  - fast: `trace_vit` + `second_order_effects` for all 3,072 neurons (the basis is built once
    per model and layer and timed separately),
  - literal: `core.engine.reference.literal_second_order` on one image (it materialises
    [token, neuron, d_model] per later head; ~tens of seconds per image).
Each measurement runs in a fresh subprocess, so the peak memory reported is that process's
ru_maxrss (resident set high-water mark, which includes the whole CLIP model as loaded by
`load_clip`, text tower too); "after load" is ru_maxrss right after loading the model.

    python -m bench.second_order [--threads 2] [--layer 9] [--repeats 3] [--device cpu]   # from the repo root
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SPEC = "ViT-B-32/none"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(function, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best cpu seconds) over `repeats` calls after one warm-up call."""
    function()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        sync()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def _measure(part: str, batch: int, layer: int, repeats: int, device: str | None = None) -> dict:
    """Runs inside the subprocess: one measurement, returned as a dict."""
    from core.engine.models import load_clip
    from core.engine.reference import literal_second_order
    from core.neurons.second_order import second_order_basis, second_order_effects
    from core.engine.trace import trace_vit

    from core.settings import resolve_device

    bundle = load_clip(SPEC, device=resolve_device(device))
    visual = bundle.model.visual
    size = bundle.info.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(bundle.device)
    result = {"part": part, "batch": batch, "device": str(bundle.device), "rss_after_load_mib": _rss_mib()}
    if part == "forward":
        with torch.inference_mode():
            result["wall"], result["cpu"] = _timed(lambda: visual(pixels), repeats)
    elif part == "fast":
        start = time.perf_counter()
        basis = second_order_basis(visual, layer)
        result["basis_s"] = time.perf_counter() - start

        def fast():
            return second_order_effects(trace_vit(visual, pixels, mlp_layers=[layer]), basis)

        result["wall"], result["cpu"] = _timed(fast, repeats)
    elif part == "literal":
        start, start_cpu = time.perf_counter(), time.process_time()
        literal = literal_second_order(visual, pixels[0], layer)
        result["wall"], result["cpu"] = time.perf_counter() - start, time.process_time() - start_cpu
        fast = second_order_effects(trace_vit(visual, pixels[:1], mlp_layers=[layer]), second_order_basis(visual, layer))[0]
        result["relative_difference"] = float((fast - literal).norm() / literal.norm())
    result["peak_rss_mib"] = _rss_mib()
    return result


def _run_part(part: str, batch: int, args) -> dict:
    command = [sys.executable, "-m", "bench.second_order", "--part", part, "--batch", str(batch),
               "--layer", str(args.layer), "--threads", str(args.threads), "--repeats", str(args.repeats),
               *(["--device", args.device] if args.device else [])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _report(results: dict) -> None:
    literal = results["literal", 1]
    print(f"device: {literal['device']}")
    literal_per_image = literal["wall"]
    print(f"literal (1 image):      wall {literal['wall']:7.2f} s, cpu {literal['cpu']:7.2f} s, "
          f"peak RSS {literal['peak_rss_mib']:.0f} MiB (after load {literal['rss_after_load_mib']:.0f} MiB)")
    print(f"fast vs literal on that image: relative difference {literal['relative_difference']:.1e}")
    for batch in (1, 8):
        fast, forward = results["fast", batch], results["forward", batch]
        per_image = fast["wall"] / batch
        print(f"batch {batch}: forward {forward['wall'] / batch * 1000:7.1f} ms/image; "
              f"fast {per_image * 1000:7.1f} ms/image (cpu {fast['cpu'] / batch * 1000:.1f} ms), "
              f"basis built once in {fast['basis_s']:.2f} s; "
              f"peak RSS fast {fast['peak_rss_mib']:.0f} MiB (after load {fast['rss_after_load_mib']:.0f} MiB), "
              f"forward {forward['peak_rss_mib']:.0f} MiB")
        print(f"  ratios: literal / fast = {literal_per_image / per_image:.0f}x (cpu "
              f"{literal['cpu'] / (fast['cpu'] / batch):.0f}x); fast / forward = {fast['wall'] / forward['wall']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=["forward", "fast", "literal"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $CLIPSCOPE_DEVICE or auto)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part:
        print(json.dumps(_measure(args.part, args.batch, args.layer, args.repeats, args.device)))
        return
    print(f"{SPEC}, layer {args.layer}, all neurons, float32 on {args.device or 'the default device'}, threads {args.threads}; "
          f"fast and forward: best of {args.repeats} after a warm-up; memory = ru_maxrss of a fresh subprocess per row")
    results = {(part, batch): _run_part(part, batch, args) for part, batch in
               [("forward", 1), ("forward", 8), ("fast", 1), ("fast", 8), ("literal", 1)]}
    _report(results)


if __name__ == "__main__":
    main()
