"""Benchmark: size of ViT-B-16-scale bases and the time to a first result from shipped bases.

    python -m bench.bases [--skip-synthetic]

1. Writes, through the real ArtifactWriter and the real group/table formats, an artifact with
   ViT-B-16's shapes: TextSpan for 48 heads x 20 texts (fitted on synthetic head outputs of 2,000
   images over 3,498 texts) and neuron bases for 3 layers x 3,072 neurons x 128 terms over a
   30,000-text pool (statistics and sparse codes are random tensors of the real shapes: OMP over
   30k texts takes minutes per layer and does not change the size). Prints its size on disk.
2. Times what an explorer does on opening, for that artifact and for the shipped toy bases:
   load + verify every file hash, then the first head's texts and the first neuron's terms.
Targets: under 50 MB; first result under 1 s after the model is loaded.
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import time
from pathlib import Path

import torch

from bench.memory import describe, load_line, machine
from core.artifacts.store import ArtifactWriter, load_artifact, text_pool_identity
from core.neurons.bases import (STORED_FLOAT, TABLE_TERMS, BuildOptions, ImageSet, _stats_to_store, _words_to_store,
                               load_neuron_basis, neuron_build_params)
from core.neurons.stats import NeuronStats
from core.neurons.texts import NeuronTexts
from core.heads.textspan import text_span
from core.heads.bases import group_name, head_text_rows, result_tensors, table_rows, textspan_build_params


def _words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10))) + str(i) for i in range(n)]


def synthetic_vit_b16(out: Path) -> Path:
    torch.manual_seed(0)
    heads = [(layer, head) for layer in range(8, 12) for head in range(12)]
    span_texts = _words(3498, 1)
    basis = torch.randn(len(heads), 40, 512)
    outputs = torch.einsum("hir,hrd->hid", torch.randn(len(heads), 2000, 40), basis) + 0.1 * torch.randn(len(heads), 2000, 512)
    text_embeddings = torch.nn.functional.normalize(torch.randn(3498, 512), dim=-1)
    result = text_span(outputs, text_embeddings, n_texts=20, rank=80)
    words = _words(30000, 2)
    layers = [8, 9, 10]
    image_set = ImageSet("folder", "2000 synthetic images", 2000, {"root": "/nonexistent", "files": []})
    writer = ArtifactWriter(out, model={"spec": "ViT-B-16/laion2b_s34b_b88k", "arch": "ViT-B-16",
                                        "pretrained": "laion2b_s34b_b88k", "weights_sha256": None,
                                        "random_init": False, "open_clip_version": "3.3.0"},
                            text_pool=text_pool_identity(words, "30k"), image_set=image_set.identity(),
                            convention="paper",
                            algorithms={"textspan": textspan_build_params(20, 80, "std", "data"),
                                        "neurons": neuron_build_params(layers, 128, BuildOptions(), None)},
                            overwrite=True)
    for row, head in enumerate(heads):
        writer.add_tensors(group_name(head), result_tensors(result, row))
    writer.add_tensors("head_means", {"mean": torch.randn(12, 12, 512), "count": torch.tensor([2000])})
    writer.add_table("textspan", table_rows(heads, result, span_texts))
    writer.add_json("texts", words)
    writer.add_json("image_set", image_set.record())
    rows = []
    for layer in layers:
        n = 3072
        stats = NeuronStats(layer, torch.randn(n, 512), torch.nn.functional.normalize(torch.randn(n, 512), dim=-1),
                            torch.rand(n), torch.randint(0, 2000, (n, 100)), torch.rand(n, 100), torch.rand(n), 2000)
        codes = NeuronTexts(torch.randint(0, 30000, (n, 128)), torch.randn(n, 128), torch.rand(n), "normalise_texts")
        writer.add_tensors(f"neuron_means_L{layer}", {"mean": stats.mean.to(STORED_FLOAT), "count": torch.tensor(2000)})
        writer.add_tensors(f"neurons_L{layer}", _stats_to_store(stats))
        writer.add_tensors(f"sparse_L{layer}", _words_to_store(codes))
        for neuron in range(n):
            rows += [{"layer": layer, "neuron": neuron, "rank": rank, "text": text, "weight": float(weight)}
                     for rank, (text, weight) in enumerate(codes.terms(neuron, words)[:TABLE_TERMS])]
    writer.add_table("neuron_terms", rows)
    return writer.finalize()


def first_results(source: Path, expect_model: dict | None = None) -> None:
    start, start_cpu = time.perf_counter(), time.process_time()
    artifact = load_artifact(source, expect_model=expect_model)
    loaded = time.perf_counter()
    first_head = sorted(n for n in artifact.names() if n.startswith("textspan_"))[0]
    layer, head = (int(x) for x in first_head[len("textspan_L"):].split("H"))
    texts = head_text_rows(artifact, (layer, head))
    head_done = time.perf_counter()
    basis = load_neuron_basis(artifact, artifact.manifest["algorithms"]["neurons"]["layers"][-1])
    terms = basis.words.terms(0, basis.texts)
    neuron_done, cpu = time.perf_counter(), time.process_time() - start_cpu
    size = sum(f.stat().st_size for f in Path(artifact.path).rglob("*") if f.is_file())
    print(f"  size {size / 1e6:.1f} MB; load + verify {1000 * (loaded - start):.0f} ms; first head's texts "
          f"{1000 * (head_done - loaded):.0f} ms ({len(texts)} texts); first neuron's terms "
          f"{1000 * (neuron_done - head_done):.0f} ms ({len(terms)} terms); total "
          f"{1000 * (neuron_done - start):.0f} ms wall, {1000 * cpu:.0f} ms CPU; {load_line()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--device", default=None, help="where the toy model is loaded: auto, cpu, cuda or cuda:N "
                        "(default: $CLIPSCOPE_DEVICE or auto)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from core.artifacts.hub import resolve_bases_source
    from core.engine.models import load_clip

    print(f"bench.bases: {describe(machine())}")
    toy = load_clip("toy", device=args.device)
    print(f"shipped toy bases (model already loaded, on {toy.device}):")
    first_results(Path(resolve_bases_source("toy")), toy.info.identity())
    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = synthetic_vit_b16(Path(tmp) / "vit-b-16")
            print(f"ViT-B-16-scale artifact (48 heads x 20 texts; 3 x 3072 neurons x 128 terms; 30k-text pool), "
                  f"written in {time.perf_counter() - start:.0f} s:")
            first_results(path)


if __name__ == "__main__":
    main()
