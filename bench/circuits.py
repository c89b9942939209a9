"""Benchmark and validation runs of the circuit lens (issue 24). Prints ratios, CPU time and the machine's load.

    python -m bench.circuits speed [--threads 2] [--layer 8] [--repeats 3]     # ViT-B-16 (random) + toy tab
    python -m bench.circuits validation [--out results.json]                  # faithfulness, labels (toy)

speed (each part in a fresh subprocess, peak memory = that process's ru_maxrss):
  - forward: a plain `visual(images)` of random-weight ViT-B-16, one image;
  - edges: every data edge of one MLP layer (3,072 neurons x later heads) for one image against a target
    (trace_vit + the per-image scalars x the precomputed <u, t>); the weight-side projection is built once and
    timed apart ("prep");
  - weights: weight edges (composition score and <u, r>) of a whole layer, chunked;
  - tab: the Circuits tab's first answer from bases on the toy model (model loaded, as the app does at start).
validation (toy, shipped bases; settings fixed in core.circuits.validation):
  - faithfulness curves of the studied neurons (lens and real model, top-k vs random-k vs attribution patching);
  - labels predict causes: the permutation test of head and neuron attributes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

SPEC = "ViT-B-16/none"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(function, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best cpu seconds) over `repeats` calls after one warm-up call."""
    function()
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def _measure(part: str, layer: int, repeats: int) -> dict:
    from core.circuits.edges import DataEdgeAccumulator, weight_edges
    from core.engine.models import load_clip
    from core.engine.trace import trace_vit

    result = {"part": part}
    if part == "tab":
        import pandas  # noqa: F401  (a running app has them loaded: Gradio imports both)
        import pyarrow.dataset  # noqa: F401

        from core.explorer import circuits

        load_clip("toy")
        result["rss_after_load_mib"] = _rss_mib()
        start, start_cpu = time.perf_counter(), time.process_time()
        circuits.show_circuit("toy", None, 1, 5, "weight")
        result["first_wall"], result["first_cpu"] = time.perf_counter() - start, time.process_time() - start_cpu
        neurons = iter(range(6, 100))
        result["wall"], result["cpu"] = _timed(lambda: circuits.show_circuit("toy", None, 2, next(neurons), "weight"),
                                               repeats)
        result["peak_rss_mib"] = _rss_mib()
        return result
    bundle = load_clip(SPEC)
    visual = bundle.model.visual
    size = bundle.info.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    result["rss_after_load_mib"] = _rss_mib()
    target = torch.nn.functional.normalize(torch.randn(1, bundle.info.d_out, generator=torch.Generator().manual_seed(1)),
                                           dim=-1)
    if part == "forward":
        with torch.inference_mode():
            result["wall"], result["cpu"] = _timed(lambda: visual(pixels), repeats)
    elif part == "edges":
        start = time.perf_counter()
        accumulator = DataEdgeAccumulator(visual, layer, target, target="t")
        result["prep_s"] = time.perf_counter() - start
        result["neurons"], result["paths"] = accumulator.projected.shape[0], accumulator.projected[0].numel()

        def edges():
            return accumulator.edges(trace_vit(visual, pixels, mlp_layers=[layer]))

        def forward():
            with torch.inference_mode():
                return visual(pixels)

        # alternate the two on a shared, loaded machine: each round's ratio compares neighbours in time
        rounds = [(_timed(forward, 1), _timed(edges, 1)) for _ in range(max(repeats, 5))]
        result["wall"], result["cpu"] = min(e[0] for _, e in rounds), min(e[1] for _, e in rounds)
        result["forward_wall"], result["forward_cpu"] = min(f[0] for f, _ in rounds), min(f[1] for f, _ in rounds)
        result["ratio_wall_median"] = sorted(e[0] / f[0] for f, e in rounds)[len(rounds) // 2]
        result["ratio_cpu_median"] = sorted(e[1] / f[1] for f, e in rounds)[len(rounds) // 2]
        result["edges_shape"] = list(edges().shape)
    elif part == "weights":
        pcs = torch.nn.functional.normalize(torch.randn(bundle.info.d_mlp, bundle.info.d_out,
                                                        generator=torch.Generator().manual_seed(2)), dim=-1)
        start, start_cpu = time.perf_counter(), time.process_time()
        edges = weight_edges(visual, layer, targets=pcs, target="r")
        result["wall"], result["cpu"] = time.perf_counter() - start, time.process_time() - start_cpu
        result["edges_shape"] = list(edges.composition.shape)
        # what the lens would hold for the layer at once without chunking: u as [neuron, later, head, d_out]
        result["unchunked_u_mib"] = bundle.info.d_mlp * edges.composition[0].numel() * bundle.info.d_out * 4 / 2**20
    result["peak_rss_mib"] = _rss_mib()
    return result


def _subprocess(part: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    code = (f"import torch, json; torch.set_num_threads({args.threads}); from bench.circuits import _measure; "
            f"print(json.dumps(_measure({part!r}, {args.layer}, {args.repeats})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args) -> dict:
    print(f"load average before: {os.getloadavg()}")
    parts = {part: _subprocess(part, args) for part in ("forward", "edges", "weights", "tab")}
    forward, edges, weights, tab = (parts[p] for p in ("forward", "edges", "weights", "tab"))
    print(f"{SPEC}, layer {args.layer}, {args.threads} threads, CPU float32")
    print(f"plain forward, 1 image: {forward['wall']:.3f} s wall, {forward['cpu']:.3f} s CPU")
    print(f"all data edges of the layer ({edges['neurons']} neurons x {edges['paths']} paths), 1 image: "
          f"{edges['wall']:.3f} s wall, {edges['cpu']:.3f} s CPU (best); forward in the same process "
          f"{edges['forward_wall']:.3f} s wall, {edges['forward_cpu']:.3f} s CPU; median ratio of alternating rounds "
          f"{edges['ratio_wall_median']:.2f}x wall, {edges['ratio_cpu_median']:.2f}x CPU; best/best "
          f"{edges['wall'] / edges['forward_wall']:.2f}x wall, {edges['cpu'] / edges['forward_cpu']:.2f}x CPU "
          f"(target <= 2x); weight-side prep once {edges['prep_s']:.2f} s")
    print(f"weight edges of the whole layer: {weights['wall']:.2f} s wall, {weights['cpu']:.2f} s CPU; peak RSS "
          f"{weights['peak_rss_mib']:.0f} MiB vs {weights['rss_after_load_mib']:.0f} MiB after loading the model "
          f"(+{weights['peak_rss_mib'] - weights['rss_after_load_mib']:.0f} MiB; u unchunked would be "
          f"{weights['unchunked_u_mib']:.0f} MiB)")
    print(f"tab, first answer from the toy bases: {tab['first_wall']:.3f} s wall / {tab['first_cpu']:.3f} s CPU "
          f"(first call: the bases are read), then "
          f"{tab['wall']:.3f} s wall / {tab['cpu']:.3f} s CPU per neuron (target < 1 s)")
    print(f"load average after: {os.getloadavg()}")
    return parts


# ---------------------------------------------------------------- validation

def validation(args) -> dict:
    import numpy as np

    import core.world  # noqa: F401
    from core.artifacts.hub import resolve_bases_source
    from core.artifacts.store import load_artifact
    from core.circuits import validation as v
    from core.circuits.ablation import token_means
    from core.circuits.edges import DataEdgeAccumulator
    from core.circuits.report import head_text_map
    from core.engine.models import load_clip
    from core.engine.trace import trace_vit
    from core.neurons.bases import load_neuron_basis, neuron_layers

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    started, started_cpu = time.perf_counter(), time.process_time()
    bundle = load_clip("toy")
    visual = bundle.model.visual
    artifact = load_artifact(resolve_bases_source("toy"), expect_model=bundle.info.identity())
    layers = neuron_layers(artifact)
    bases = {layer: load_neuron_basis(artifact, layer, bundle.info) for layer in layers}
    image_set = bases[layers[0]].image_set
    out: dict = {"model": "toy", "bases": str(artifact.path), "image_set": image_set.description,
                 "settings": {name: getattr(v, name) for name in ("STUDIED_PER_LAYER", "FAITH_IMAGES", "MEAN_IMAGES",
                                                                  "RANDOM_DRAWS_LENS", "RANDOM_DRAWS_REAL",
                                                                  "KEEP_TARGET", "SEED", "LABEL_TERMS",
                                                                  "PERMUTATIONS")}}
    # 3. faithfulness
    curves = []
    for layer in layers:
        stats = bases[layer].stats
        neurons = v.studied_neurons(stats.thresholds)
        means = token_means(visual, layer, image_set.slice(0, v.MEAN_IMAGES).batches(bundle.preprocess, 64),
                            neurons=neurons)
        for column, neuron in enumerate(neurons):
            ids = stats.top_images[neuron, :v.FAITH_IMAGES].tolist()
            pixels = torch.stack([bundle.preprocess(image_set.image(i)) for i in ids])
            f = v.faithfulness(visual, pixels, layer, neuron, means[:, column], stats.pcs[neuron],
                               real=not args.lens_only)
            curves.append(f)
            print(f"L{layer}.n{neuron}: P={len(f.paths)} full lens {f.full_lens:+.4f} real {f.full_real:+.4f}; "
                  f"k90 lens {f.k_for(evaluation='lens')} real {f.k_for(evaluation='real')}")
            for evaluation in ("lens", "real"):
                kept = f.kept[evaluation]
                print(f"  {evaluation}: top {np.round(kept['top'], 3).tolist()}\n"
                      f"  {evaluation}: attribution {np.round(kept['attribution'], 3).tolist()}\n"
                      f"  {evaluation}: random {np.round(kept['random'], 3).tolist()} "
                      f"(std {np.round(kept['random_std'], 3).tolist()})")
    out["faithfulness"] = [_curve_record(f) for f in curves]
    out["faithfulness_summary"] = _summary(curves, v)
    print(json.dumps(out["faithfulness_summary"], indent=1))
    # 4. labels predict causes
    texts = head_text_map(artifact, v.LABEL_TERMS)
    head_attributes = {head: v.head_attribute(list(texts.get(head, ())))
                       for head in sorted(texts) if head[0] > min(layers)}
    neuron_attributes = {layer: [v.neuron_attribute(bases[layer].words.terms(n, bases[layer].texts))
                                 for n in range(bundle.info.d_mlp)] for layer in layers}
    accumulators = {layer: DataEdgeAccumulator(visual, layer, bases[layer].stats.pcs, active=bases[layer].stats.top_images,
                                               target="r_n") for layer in layers}
    for ids, pixels in image_set.batches(bundle.preprocess, 64):
        trace = trace_vit(visual, pixels, mlp_layers=layers)
        for accumulator in accumulators.values():
            accumulator.add(trace, ids)
    data = {layer: accumulators[layer].result().mean.abs() for layer in layers}
    from core.circuits.edges import weight_edges

    composition = {layer: weight_edges(visual, layer).composition for layer in layers}
    out["labels"] = {}
    for name, edges in (("data edges", data), ("weight edges (composition)", composition)):
        test = v.labels_predict_causes(edges, neuron_attributes, head_attributes)
        out["labels"][name] = {"statistic": test.statistic, "null_mean": test.null_mean, "null_std": test.null_std,
                               "p_value": test.p_value, "neurons": test.n_neurons, "permutations": test.permutations}
        print(f"labels predict causes ({name}): mean share on same-attribute heads {test.statistic:.4f} vs null "
              f"{test.null_mean:.4f} +- {test.null_std:.4f} over {test.permutations} permutations, p = "
              f"{test.p_value:.4g}, {test.n_neurons} neurons")
    out["head_attributes"] = {f"L{l}H{h}": a for (l, h), a in head_attributes.items()}
    counts: dict = {}
    for layer in layers:
        for attribute in neuron_attributes[layer]:
            counts[str(attribute)] = counts.get(str(attribute), 0) + 1
    out["neuron_attribute_counts"] = counts
    print(f"head attributes: {out['head_attributes']}\nneuron attributes: {counts}")
    out["seconds"] = {"wall": time.perf_counter() - started, "cpu": time.process_time() - started_cpu}
    print(f"validation: {out['seconds']['wall']:.0f} s wall, {out['seconds']['cpu']:.0f} s CPU; load average after: "
          f"{os.getloadavg()}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(out, handle, indent=1)
    return out


def _curve_record(f) -> dict:
    return {"layer": f.layer, "neuron": f.neuron, "paths": [f"L{l}H{h}" for l, h in f.paths],
            "lens_effects": f.lens_effects.tolist(), "attribution": f.attribution.tolist(),
            "full_lens": f.full_lens, "full_real": f.full_real,
            "kept": {e: {c: np.asarray(x).tolist() for c, x in d.items()} for e, d in f.kept.items()},
            "k90_lens": f.k_for(evaluation="lens"), "k90_real": f.k_for(evaluation="real")}


def _summary(curves, v) -> dict:
    import numpy as np

    summary: dict = {}
    for evaluation in ("lens", "real"):
        wins_random = wins_attr = strict_attr = comparisons = 0
        for f in curves:
            kept = f.kept[evaluation]
            for k in range(len(f.paths) - 1):  # k = P keeps everything for every choice
                comparisons += 1
                wins_random += bool(kept["top"][k] > kept["random"][k])
                wins_attr += bool(kept["top"][k] >= kept["attribution"][k] - 1e-12)
                strict_attr += bool(kept["top"][k] > kept["attribution"][k] + 1e-12)
        k90 = [f.k_for(v.KEEP_TARGET, evaluation) for f in curves]
        summary[evaluation] = {"top_beats_random": f"{wins_random}/{comparisons}",
                               "top_at_least_attribution": f"{wins_attr}/{comparisons}",
                               "top_strictly_above_attribution": f"{strict_attr}/{comparisons}",
                               "k90_per_neuron": k90, "k90_median": float(np.median(k90)),
                               "paths_per_neuron": [len(f.paths) for f in curves]}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "validation"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=8, help="speed: the ViT-B-16 MLP layer (default 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lens-only", action="store_true", help="validation: skip the hooked re-runs")
    parser.add_argument("--out", help="validation: write the numbers as JSON")
    args = parser.parse_args(argv)
    speed(args) if args.what == "speed" else validation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
