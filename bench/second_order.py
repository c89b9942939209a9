"""Benchmark: second-order effects of a whole MLP layer vs a plain forward, and vs the paper's literal loop.

Setting of the issue: ViT-B-32 (random init, `ViT-B-32/none`), MLP layer 9 (3,072 neurons,
2 later layers x 12 heads), CPU float32. Modes:
  - forward: the model's own encode_image (for scale),
  - fast: `trace_vit` + `second_order_effects` for all 3,072 neurons (the basis is built once per
    model and layer, before timing; its time is printed),
  - with trace: `second_order_effects` alone, on a trace already computed (what a tab pays when the
    trace is shared with other lenses),
  - literal: `core.engine.reference.literal_second_order` on one image (it materialises
    [token, neuron, d_model] per later head; tens of seconds per image; `--skip-literal`).

Time: one subprocess; the modes alternate within each repeat after a warm-up, and the best CPU time
(process, all threads) and wall time are printed; ratios use CPU time. Memory: one fresh subprocess
per (mode, batch): the mode's first call, peak resident memory over the memory before it (bench.memory).
Targets (issue 25): fast <= 1.05x a forward; with a trace already computed <= 0.2x.

    python -m bench.second_order [--batches 1 8] [--repeats 5] [--layer 9] [--skip-literal]   # repo root
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from bench.memory import describe, fresh_peak, load_line, machine, run_child, timed

SPEC = "ViT-B-32/none"
MODES = ("forward", "fast", "with trace")
TARGETS = {"fast": 1.05, "with trace": 0.2}


def _setup(layer: int, threads: int, device: str | None):
    from core.engine.models import load_clip
    from core.engine.trace import trace_vit
    from core.neurons.second_order import second_order_basis, second_order_effects
    from core.settings import resolve_device

    torch.set_num_threads(threads)
    bundle = load_clip(SPEC, device=resolve_device(device))
    visual = bundle.model.visual
    basis, basis_wall, basis_cpu = timed(second_order_basis, visual, layer)
    sync = torch.cuda.synchronize if bundle.device.type == "cuda" else None

    def pixels(batch):
        size = bundle.info.image_size
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(bundle.device)

    def forward(x):
        with torch.inference_mode():
            return bundle.model.encode_image(x)

    def fast(x):
        return second_order_effects(trace_vit(visual, x, mlp_layers=[layer]), basis)

    return bundle, {"forward": forward, "fast": fast}, pixels, basis, sync, (basis_wall, basis_cpu)


def child_time(batches, layer, repeats, threads, device) -> dict:
    from core.engine.trace import trace_vit
    from core.neurons.second_order import second_order_effects

    bundle, modes, pixels, basis, sync, basis_time = _setup(layer, threads, device)
    out = {"device": str(bundle.device), "basis_wall": basis_time[0], "basis_cpu": basis_time[1]}
    for batch in batches:
        x = pixels(batch)
        trace = trace_vit(bundle.model.visual, x, mlp_layers=[layer])
        calls = {**modes, "with trace": lambda _x: second_order_effects(trace, basis)}
        for fn in calls.values():
            fn(x)
        runs = {mode: [] for mode in calls}
        for _ in range(repeats):
            for mode, fn in calls.items():
                runs[mode].append(timed(fn, x, sync=sync)[1:])
        out[str(batch)] = {mode: {"wall": min(w for w, _ in r), "cpu": min(c for _, c in r)} for mode, r in runs.items()}
    return out


def child_memory(batch, layer, mode, threads, device) -> dict:
    from core.engine.trace import trace_vit
    from core.neurons.second_order import second_order_effects

    bundle, modes, pixels, basis, _, _ = _setup(layer, threads, device)
    x = pixels(batch)
    if mode == "with trace":
        trace = trace_vit(bundle.model.visual, x, mlp_layers=[layer])
        modes["with trace"] = lambda _x: second_order_effects(trace, basis)
    a = torch.randn(64, 64)
    torch.nn.functional.layer_norm(a @ a, (64,)).softmax(-1)  # start the thread pools, nothing of the model
    _, peak, before = fresh_peak(modes[mode], x)
    return {"extra": peak - before, "peak": peak}


def child_literal(layer, threads, device) -> dict:
    from core.engine.reference import literal_second_order
    from core.engine.trace import trace_vit
    from core.neurons.second_order import second_order_effects

    bundle, modes, pixels, basis, _, _ = _setup(layer, threads, device)
    x = pixels(1)
    literal, wall, cpu = timed(literal_second_order, bundle.model.visual, x[0], layer)
    fast = second_order_effects(trace_vit(bundle.model.visual, x, mlp_layers=[layer]), basis)[0].cpu()
    return {"wall": wall, "cpu": cpu, "relative_difference": float((fast - literal).norm() / literal.norm())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-literal", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["time", "memory", "literal"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $CLIPSCOPE_DEVICE or auto)")
    args = parser.parse_args()
    if args.child == "time":
        print(json.dumps(child_time(args.batches, args.layer, args.repeats, args.threads, args.device)))
        return
    if args.child == "memory":
        print(json.dumps(child_memory(args.batches[0], args.layer, args.mode, args.threads, args.device)))
        return
    if args.child == "literal":
        print(json.dumps(child_literal(args.layer, args.threads, args.device)))
        return
    common = ["--layer", str(args.layer), "--threads", str(args.threads)] + (["--device", args.device] if args.device else [])
    print(f"bench.second_order: {describe(machine())}; torch {torch.__version__}, {args.threads} threads"
          f"{', OMP_WAIT_POLICY=' + os.environ['OMP_WAIT_POLICY'] if 'OMP_WAIT_POLICY' in os.environ else ''}\n"
          f"{SPEC}, layer {args.layer}, all neurons, float32")
    misses = []
    result = run_child("bench.second_order", ["--child", "time", "--batches", *map(str, args.batches),
                                              "--repeats", str(args.repeats), *common])
    if "error" in result:
        raise SystemExit(f"timing run failed: {result['error']}")
    print(f"device {result['device']}; basis built once in {result['basis_cpu']:.2f} s CPU ({result['basis_wall']:.2f} s wall)")
    print(f"\n## Time: best of {args.repeats} interleaved runs (ms per batch; ratios of CPU times)\n   {load_line()}")
    for batch in map(str, args.batches):
        rows = result[batch]
        base = rows["forward"]
        for mode, row in rows.items():
            ratio = row["cpu"] / base["cpu"]
            target = TARGETS.get(mode)
            verdict = "" if target is None else f"  target <= {target}x: " + ("met" if ratio <= target else "MISSED")
            if target is not None and ratio > target:
                misses.append(f"time batch {batch} {mode} {ratio:.2f}x")
            print(f"  batch {batch:>2s} {mode:11s} cpu {1000 * row['cpu']:8.1f} ms  wall {1000 * row['wall']:8.1f} ms"
                  f"   x{ratio:5.2f} cpu  x{row['wall'] / base['wall']:5.2f} wall{verdict}")
    print(f"   {load_line()}")
    if not args.skip_memory:
        print(f"\n## Memory: extra peak resident memory of the first call (fresh process per row)\n   {load_line()}")
        for batch in args.batches:
            rows = {mode: run_child("bench.second_order", ["--child", "memory", "--batches", str(batch), "--mode", mode,
                                                           *common]) for mode in MODES}
            base = rows["forward"].get("extra")
            for mode, row in rows.items():
                if "error" in row:
                    print(f"  batch {batch:2d} {mode:11s} did not run: {row['error']}")
                    continue
                print(f"  batch {batch:2d} {mode:11s} extra {row['extra'] / 2**20:8.1f} MiB  x{row['extra'] / base:5.2f}"
                      f"   process peak {row['peak'] / 2**20:7.0f} MiB")
    if not args.skip_literal:
        literal = run_child("bench.second_order", ["--child", "literal", *common])
        if "error" in literal:
            print(f"\nliteral: did not run: {literal['error']}")
        else:
            fast_cpu = result["1"]["fast"]["cpu"] if "1" in result else float("nan")
            print(f"\nliteral loop, one image: cpu {literal['cpu']:.1f} s (wall {literal['wall']:.1f} s); fast vs literal "
                  f"relative difference {literal['relative_difference']:.1e}; literal / fast (batch 1, cpu) = "
                  f"{literal['cpu'] / fast_cpu:.0f}x")
    print("\nall targets met" if not misses else "\ntargets missed: " + "; ".join(misses))


if __name__ == "__main__":
    main()
