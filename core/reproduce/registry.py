"""One command per paper table: the registry `python -m core reproduce TABLE` reads.

Each table is a function `run(options, log) -> dict` in its own module of `core.reproduce`; the dict holds
`rows` (our numbers, each next to the published one where the paper gives it), `published` (with provenance
tags), `settings` and `notes`. The command line only parses, calls and writes the JSON.

Costs are ESTIMATES (no GPU was available when they were written): forward FLOPs of the architectures at
about 50% of an H100's 67 TFLOP/s FP32 (PyTorch's default float32 matmuls), times the passes each table
makes, plus what is stated; see docs/reproduce.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class TableOptions:
    """What a table run may use; each table reads what it needs and says what is missing."""

    models: tuple[str, ...] = ()  # default: the paper's models for that table
    images: str | None = None  # the labelled evaluation set (ImageNet val, Waterbirds folder, world:N:SEED, ...)
    label_column: str | None = None
    means_from: str | None = None  # default: the evaluated set itself, as the papers' code
    data: str | None = None  # ImageNet-segmentation gtsegs_ijcv.mat, world:N:SEED or world-pairs:N:SEED
    bases: str | None = None  # bases with the neuron layers / TextSpan the table needs
    texts: str | None = None  # a text pool file (TextSpan, neuron words)
    heads: str | None = None  # a head set (Waterbirds) for a model the paper gives none for
    limit: int | None = None  # only the first N images (a quick look; results say so)
    device: str = "cpu"
    batch_size: int = 32
    state_dir: str | None = None
    generator: str = "sd"  # adversarial: sd (diffusers, pinned) or world (the offline stand-in)
    llm: str | None = None  # adversarial: a text-generation model (default: templates)
    tasks: tuple[str, ...] = ()  # adversarial: PRESENT:TARGET pairs (default: the paper's five)
    repeats: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    name: str
    paper: str  # "1" or "2"
    title: str
    module: str  # "module" or "module:function" in core.reproduce (default function: run(options, log))
    needs: str  # the data it needs, in words
    default_models: tuple[str, ...]
    gpu_hours: str  # an ESTIMATE, stated as one
    smoke: str  # a command that runs it here on random weights or the toy world

    def run(self, options: TableOptions, log: Callable[[str], None] = lambda _: None) -> dict:
        module, _, function = self.module.partition(":")
        result = getattr(importlib.import_module(f"core.reproduce.{module}"), function or "run")(options, log)
        return {"table": self.name, "paper": self.paper, "title": self.title, **result}


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("p1-ablations", "1", "mean-ablation of direct effects: all MLPs, CLS->CLS, accumulated attention layers, "
          "each late head (ImageNet val zero-shot)", "ablation_table",
          "ImageNet val (--images DIR of WordNet-id folders, or hf:...@COMMIT:validation --label-column label)",
          ("ViT-B-16/laion2b_s34b_b88k", "ViT-L-14/laion2b_s32b_b82k", "ViT-H-14/laion2b_s32b_b79k"),
          "~0.5 GPU-h: 3 models x 50,000 images x 2 passes (means, evaluation) (estimate)",
          "python -m core reproduce p1-ablations --model toy --images world:60:3 --label-column shape"),
    Table("p1-textspan", "1", "TextSpan top texts of ViT-L-14's last 4 layers (64 heads) and the accuracy with "
          "them", "textspan_table", "ImageNet val images (--images) and the general description pool (--texts)",
          ("ViT-L-14/laion2b_s32b_b82k",), "~0.2 GPU-h: 2 passes of ViT-L-14 over 50,000 images, plus the fit (estimate)",
          "python -m core reproduce p1-textspan --model toy --images world:100:3 --label-column shape --texts toy "
          "--per-head 8"),
    Table("p1-waterbirds", "1", "Waterbirds worst-group accuracy: base, the paper's heads mean-ablated, the "
          "population of random head sets", "waterbirds_table",
          "the Waterbirds folder (--images; test split 2), the heads of paper 1, section 4.3 (its project page's table and code) (or --heads)",
          ("ViT-B-16/laion2b_s34b_b88k", "ViT-L-14/laion2b_s32b_b82k", "ViT-H-14/laion2b_s32b_b79k"),
          "~0.05 GPU-h: 5,794 images x 3 models x 2 passes; the random sets add no model runs (estimate)",
          "python -m core reproduce p1-waterbirds --model toy-biased --images GROUPED_DIR --heads 0.2,0.3,1.3,3.0,3.1,3.3"),
    Table("p1-segmentation", "1", "ImageNet-segmentation: rollout, raw attention, GradCAM, Chefer et al., heads "
          "(paper 1's table)", "segmentation_tables:run_p1", "gtsegs_ijcv.mat (--data)", ("ViT-H-14/laion2b_s32b_b79k",),
          "~0.25 GPU-h: ViT-H-14, 4,276 images, 2 protocols, ~9 forward-equivalents each (estimate)",
          "python -m core reproduce p1-segmentation --model toy --data world:40:3"),
    Table("p2-segmentation", "2", "ImageNet-segmentation, ViT-B-32: the baselines, heads, second-order neurons and "
          "random neurons over 10 draws (paper 2's table 4)", "segmentation_tables:run_p2",
          "gtsegs_ijcv.mat (--data) and neuron bases of ViT-B-32/openai over layers 8-10 (--bases)",
          ("ViT-B-32/openai",), "~0.05 GPU-h: ViT-B-32, 4,276 images, 2 protocols x 17 runs; plus the bases build (estimate)",
          "python -m core reproduce p2-segmentation --model toy --data world:40:3"),
    Table("toy-segmentation", "1+2", "the toy world's two benchmarks side by side: single-object scenes and "
          "composites of two classes (class specificity)", "segmentation_tables:run_toy",
          "nothing (generated held-out scenes; settings fixed in core.segmentation.benchmarks)", ("toy",),
          "CPU only: measured 97 min wall, 16 CPU-min on 2 cores at load 12-16 (docs/reproduce.md)",
          "python -m core reproduce toy-segmentation --limit 8"),
    Table("p2-ablations", "2", "table 1: mean-ablating all neurons' indirect vs second-order effects of layer 9, "
          "and the variance the first PC explains", "second_order_table",
          "ImageNet val (--images), ImageNet train subsample for the means and PCs (--means-from)",
          ("ViT-B-32/openai",), "~0.15 GPU-h: 2 passes over 50,000 val images, the 5,124-image statistics, and "
          "3,072 partial re-runs per image over 1,000 images for the indirect PCs (estimate)", "python -m core reproduce p2-ablations --model toy --images world:60:3 --label-column "
          "shape --means-from world:60:4"),
    Table("p2-adversarial", "2", "table 3: images out of 100 that fool the binary classifier, second-order vs random "
          "neurons vs similar words, 3 repeats", "adversarial_table",
          "neuron bases of ViT-B-32/openai layers 8-10 with the 30k-word decompositions (--bases); a text-to-image "
          "model (SD-Turbo, pinned) and optionally an LLM (--llm)", ("ViT-B-32/openai",),
          "~0.15 GPU-h: 4,500 SD-Turbo images (5 tasks x 3 methods x 3 repeats x 100); "
          "+ ~0.5 GPU-h with --llm Llama-3-8B (estimate)",
          "python -m core reproduce p2-adversarial --model toy-biased --generator world --task square:triangle"),
)}


def table(name: str) -> Table:
    from core.errors import ConfigError

    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}; choose one of {', '.join(TABLES)} (python -m core reproduce list)")
    return TABLES[name]
