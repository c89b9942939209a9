"""The bases build (TextSpan + neuron statistics) over fixed shards, in one process or many (torchrun).

The shard is the unit of work, of resume and of reduction:
  * the image set is cut into S = ceil(count / shard_size) shards of consecutive ids, with batch
    boundaries fixed inside each, so every image is computed in the same batch whatever the world
    size W; rank r computes the shards s with s % W == r;
  * pass 1 writes, per shard, the image count, every head's output sum, the TextSpan heads' Gram
    matrices and every neuron's effect sum (float64); they are reduced slot by slot in shard order
    (`runtime.reduce_slots`), so the totals have the same bits for any W;
  * pass 2 (deviations from the merged neuron means) keeps a running top-k per neuron under a strict
    total order (`topk`), writes per shard the images still in it, and merges ranks exactly;
  * then rank 0 runs TextSpan once on the merged statistics, the first PCs once on the merged top-k
    (float64), the sparse text decompositions, and writes the artifact (`core.artifacts.store`: it has
    no manifest until everything is written, so an interrupted build never looks complete).
Each shard's partial is written atomically under the work folder, in a sub-folder keyed by everything
that changes it; a rerun, with any world size, reads finished shards back instead of recomputing them.
The work folder is a `core.writes.OutputFolder`: each process lists the partials it wrote in its own
manifest, and once the artifact is finalised exactly those files (and the folders the build created) are
removed. A folder the user named with --work-dir is kept, with anything else in it.
With more processes than shards, the extra processes stay idle (they still take part in every merge, with
zeros), so the artifact is the same as one process's.

Memory per rank: one batch of effects plus the statistics (heads' Gram matrices, one [neuron, k, d_out]
top-k per layer), whatever the size of the image set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.artifacts.store import ArtifactWriter, text_pool_identity
from core.distributed import runtime as rt
from core.distributed.headstats import HeadStatistics, accumulate, text_span_from_stats
from core.distributed.topk import RunningTopK, merge_across_ranks
from core.engine.contributions import direct_effects, fold_weights
from core.engine.imagesets import ImageSet
from core.engine.models import ClipBundle
from core.engine.text import cache_dir, encode_texts
from core.engine.trace import trace_vit
from core.errors import ConfigError, DatasetError
from core.writes import OutputFolder
from core.heads.bases import (MEANS_GROUP, TABLE, _check_sizes, group_name, result_tensors, table_rows,
                              textspan_build_params, textspan_metrics)
from core.heads.outputs import Head, check_heads
from core.neurons.bases import (STORED_FLOAT, BuildOptions, neuron_build_params, write_neuron_layer,
                                write_neuron_tables)
from core.neurons.second_order import check_layer, second_order_basis, second_order_effects
from core.neurons.stats import check_k

DEFAULT_SHARD_SIZE = 2048
WORK_FORMAT = 2
Progress = Callable[..., Iterable]


@dataclass(frozen=True)
class BasesPlan:
    """What to build. `shard_size` must be a multiple of `options.batch_size`."""

    heads: list[Head]
    neuron_layers: list[int]
    per_head: int = 20
    rank: int = 80
    n_terms: int = 24
    options: BuildOptions = BuildOptions()
    shard_size: int = DEFAULT_SHARD_SIZE
    convention: str = "paper"
    criterion: str = "std"
    loader_threads: int = 0  # decode each batch's images in threads (a GPU outruns one decoding thread)
    circuits: bool = False  # also store every neuron's weight edges to the later heads (core.circuits.bases)

    def n_shards(self, count: int) -> int:
        return -(-count // self.shard_size)

    def shard_range(self, shard: int, count: int) -> tuple[int, int]:
        return shard * self.shard_size, min(count, (shard + 1) * self.shard_size)

    def sharding(self, count: int) -> dict:
        """The shard plan recorded in the manifest (part of the build: it fixes the summation order)."""
        return {"shard_size": self.shard_size, "shards": self.n_shards(count), "batch_size": self.options.batch_size,
                "assignment": "shard s = image ids [s * shard_size, (s + 1) * shard_size), computed by rank s % W"}


@dataclass
class BuildReport:
    """What a build did, for logs and benchmarks (seconds are this rank's)."""

    path: Path | None
    world_size: int
    shards: int
    computed: dict[str, int] = field(default_factory=dict)  # pass -> shards this rank computed
    resumed: dict[str, int] = field(default_factory=dict)  # pass -> shards read back
    images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # pass1, merge1, pass2, merge2, finish
    skipped: list[str] = field(default_factory=list)


def build_bases(
    bundle: ClipBundle, image_set: ImageSet, texts: list[str], out: str | os.PathLike, plan: BasesPlan, *,
    pool_name: str, runtime: rt.Runtime | None = None, work_dir: str | os.PathLike | None = None,
    overwrite: bool = False, progress: Progress | None = None, log: Callable[[str], None] = lambda _: None,
) -> BuildReport:
    """Build the bases artifact at `out` (written by rank 0); every rank calls this with the same arguments."""
    runtime = runtime or rt.Runtime(0, 1, 0, bundle.device, None)
    count = image_set.count
    _check_plan(bundle, plan, count, len(texts), runtime)
    identity = {"model": bundle.info.identity(), "text_pool": text_pool_identity(texts, pool_name),
                "image_set": {k: v for k, v in image_set.identity().items() if k != "description"},
                "plan": _plan_record(plan)}
    rt.agree(runtime, identity)
    writer = _on_main(runtime, "opening the output folder", lambda: ArtifactWriter(
        out, model=bundle.info.identity(), text_pool=identity["text_pool"], image_set=image_set.identity(),
        convention=plan.convention, algorithms=_algorithms(plan, count), overwrite=overwrite))
    n_shards = plan.n_shards(count)
    report = BuildReport(None, runtime.world_size, n_shards)
    mine = rt.owned(range(n_shards), runtime)
    work = _open_work(work_dir, _work_key(bundle, image_set, plan), runtime)
    if runtime.is_main:
        work.write_text("plan.json", json.dumps({"identity": identity, "sharding": plan.sharding(count)}, indent=1,
                                                default=str))
    log(f"{n_shards} shards of up to {plan.shard_size} images; {runtime.describe()}; work folder {work.path}")
    if n_shards < runtime.world_size:
        log(f"note: {n_shards} shard(s) for {runtime.world_size} processes: ranks {n_shards}..{runtime.world_size - 1} "
            f"stay idle (the result is the same; --shard-size {max(plan.options.batch_size, count // runtime.world_size // plan.options.batch_size * plan.options.batch_size)} "
            "would give every process work)")
    elif n_shards % runtime.world_size:
        log(f"note: {n_shards} shards do not divide evenly over {runtime.world_size} processes: ranks "
            f"0..{n_shards % runtime.world_size - 1} compute one more (the result is the same; the time is not)")

    started = time.perf_counter()
    layers = {layer: second_order_basis(bundle.model.visual, layer) for layer in plan.neuron_layers}
    _run_pass(1, bundle, image_set, plan, work, mine, runtime, report, progress,
              lambda shard: _pass1_shard(bundle, image_set, plan, layers, shard))
    report.seconds["pass1"] = time.perf_counter() - started

    started = time.perf_counter()
    totals, per_shard_counts = _merge_pass1(bundle, plan, work, n_shards, count, runtime)
    report.seconds["merge1"] = time.perf_counter() - started
    report.images = int(totals["count"])
    if plan.neuron_layers:
        check_k(plan.options.k, report.images)
    if report.images < max(2, plan.rank):
        raise DatasetError(f"only {report.images} readable images: TextSpan needs at least {max(2, plan.rank)}")
    means = {layer: (totals[f"neuron_sum_L{layer}"] / report.images).float().to(STORED_FLOAT).float()
             for layer in plan.neuron_layers}  # pass 2 uses the stored (rounded) means, as a resumed build does

    tops = _pass2(bundle, image_set, plan, work, mine, runtime, report, progress, layers, means, per_shard_counts)

    started = time.perf_counter()
    report.skipped = [text for part in rt.gather_json(runtime, _skipped(work, mine)) for text in part]
    report.path = _on_main(runtime, "writing the artifact", lambda: _write_artifact(
        writer, bundle, image_set, texts, plan, totals, means, tops, report, progress))
    report.seconds["finish"] = time.perf_counter() - started
    log("seconds (rank 0): " + json.dumps({k: round(v, 3) for k, v in report.seconds.items()}))
    _remove_partials(work, mine)
    rt.barrier(runtime)
    if runtime.is_main:
        kept = work.clear()  # what this build wrote and nothing else; a folder the user named stays
        if kept:
            log(f"kept in the work folder (changed by someone, or holding other files): {', '.join(kept[:5])}")
    return report


def _on_main(runtime: rt.Runtime, what: str, make):
    """`make()` on rank 0 (None elsewhere); its failure reaches every rank, so none waits at a barrier that never comes."""
    result, problem = None, None
    if runtime.is_main:
        try:
            result = make()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
            problem = str(err)
            if runtime.distributed:
                rt.raise_if_any(runtime, problem, what)
            raise
    rt.raise_if_any(runtime, problem, what)
    return result


def _pass2(bundle, image_set, plan, work, mine, runtime, report, progress, layers, means, per_shard_counts
           ) -> dict[int, RunningTopK]:
    """Pass 2 (each neuron's top-k second-order effects, per layer) over this rank's shards, merged across ranks."""
    if not plan.neuron_layers:
        return {}
    started = time.perf_counter()
    tops = {layer: RunningTopK.empty(means[layer].shape[0], plan.options.k, means[layer].shape[1],
                                     dtype=torch.float16 if plan.options.half else torch.float32,
                                     device=bundle.device) for layer in plan.neuron_layers}
    device_means = {layer: mean.to(bundle.device) for layer, mean in means.items()}
    _run_pass(2, bundle, image_set, plan, work, mine, runtime, report, progress,
              lambda shard: _pass2_shard(bundle, image_set, plan, layers, device_means, tops, shard,
                                         per_shard_counts[shard]),
              resume=lambda shard, stored: _resume_pass2(tops, stored))
    report.seconds["pass2"] = time.perf_counter() - started
    started = time.perf_counter()
    tops = {layer: merge_across_ranks(runtime, top, f"the top-k merge of layer {layer}") for layer, top in tops.items()}
    report.seconds["merge2"] = time.perf_counter() - started
    return tops


# ---------------------------------------------------------------- checks and identity


def _check_plan(bundle: ClipBundle, plan: BasesPlan, count: int, n_texts: int, runtime: rt.Runtime) -> None:
    heads = check_heads(plan.heads, bundle.info)
    if heads != list(plan.heads):
        raise ConfigError("heads must be distinct (layer, head) pairs")
    for layer in plan.neuron_layers:
        check_layer(bundle.model.visual, layer)
    size, batch = plan.shard_size, plan.options.batch_size
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch!r}")
    if not isinstance(size, int) or size < batch or size % batch:
        raise ConfigError(f"--shard-size {size} must be a positive multiple of --batch-size {batch}: batch "
                          "boundaries inside a shard are what make every world size give the same sums")
    _check_sizes(bundle, count, n_texts, plan.per_head, plan.rank, "data", None)
    if plan.neuron_layers:
        check_k(plan.options.k, count)


def _plan_record(plan: BasesPlan) -> dict:
    record = asdict(plan)
    record.pop("loader_threads")  # how images are decoded never changes a result
    record["heads"] = [list(h) for h in plan.heads]
    return record


def _algorithms(plan: BasesPlan, count: int) -> dict:
    algorithms = {"textspan": textspan_build_params(plan.per_head, plan.rank, plan.criterion, "data"),
                  "neurons": neuron_build_params(plan.neuron_layers, plan.n_terms, plan.options, None),
                  "sharding": plan.sharding(count)}
    if plan.circuits:
        from core.circuits.bases import circuit_build_params

        algorithms["circuits"] = circuit_build_params(plan.neuron_layers)
    return algorithms


def _work_key(bundle: ClipBundle, image_set: ImageSet, plan: BasesPlan) -> str:
    """Everything that changes a shard's partial (not the text pool: partials hold no texts)."""
    import core

    options = plan.options
    key = {"format": WORK_FORMAT, "version": core.__version__, "model": bundle.info.identity(),
           "images": image_set.fingerprint(), "heads": [list(h) for h in plan.heads], "layers": plan.neuron_layers,
           "convention": plan.convention, "mode": options.mode, "coefficient": options.coefficient, "k": options.k,
           "half": options.half, "shard_size": plan.shard_size, "batch_size": options.batch_size}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- passes


class _Work:
    """This build's partials: `<key>/pass<N>/shard<S>.safetensors` in the work folder (an OutputFolder)."""

    def __init__(self, folder: OutputFolder, key: str):
        self.folder, self.key = folder, key
        self.path = folder.path / key

    def rel(self, pass_number: int, shard: int) -> str:
        return f"{self.key}/pass{pass_number}/shard{shard:06d}.safetensors"

    def write_text(self, name: str, text: str) -> None:
        self.folder.write_text(f"{self.key}/{name}", text)

    def read(self, pass_number: int, shard: int) -> dict[str, torch.Tensor] | None:
        """A finished partial this build (any process, any earlier run) wrote, else None."""
        rel = self.rel(pass_number, shard)
        path = self.folder.path / rel
        if not path.is_file() or not self.folder.listed(rel) or not self.folder.owns(rel):
            return None
        try:
            stored = load_file(path)
        except (SafetensorError, OSError, ValueError):
            self.folder.remove(rel)  # damaged: recomputed, never trusted
            return None
        self.folder.adopt(rel)
        return stored

    def load(self, pass_number: int, shard: int) -> dict[str, torch.Tensor]:
        stored = self.read(pass_number, shard)
        if stored is None:
            raise DatasetError(f"the partial of shard {shard} (pass {pass_number}) is missing or was changed in "
                               f"{self.path}; run the same command again to recompute it")
        return stored

    def save(self, pass_number: int, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        prepared = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        self.folder.write(self.rel(pass_number, shard), lambda tmp: save_file(prepared, tmp))  # complete or absent

    def drop(self, pass_number: int, shard: int) -> None:
        self.folder.remove(self.rel(pass_number, shard))

    def clear(self) -> list[str]:
        return self.folder.clear()


def _open_work(work_dir, key: str, runtime: rt.Runtime) -> _Work:
    """The work folder (--work-dir, else the cache's bases-work/), opened by rank 0 first: the others then see
    its manifest (which records whether the build created the folder)."""
    root = Path(work_dir) if work_dir else cache_dir() / "bases-work"

    def make() -> OutputFolder:
        return OutputFolder(root, "bases-work", manifest=f".clipscope-bases-work-{key}.rank{runtime.rank}.json",
                            siblings=f".clipscope-bases-work-{key}.rank*.json", require="any",
                            what="work folder --work-dir" if work_dir else "work folder")

    def first() -> OutputFolder:
        folder = make()
        folder.save()
        return folder

    folder = _on_main(runtime, "opening the work folder", first)
    if not runtime.is_main:
        problem = None
        try:
            folder = make()
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
            problem = str(err)
        rt.raise_if_any(runtime, problem, "opening the work folder")
    else:
        rt.raise_if_any(runtime, None, "opening the work folder")
    return _Work(folder, key)


def _run_pass(number, bundle, image_set, plan, work, mine, runtime, report, progress, compute, resume=None):
    computed = resumed = 0
    todo = []
    for shard in mine:
        stored = work.read(number, shard)
        if stored is None:
            todo.append(shard)
            continue
        if resume is not None:
            resume(shard, stored)
        resumed += 1
    shards = progress(todo, total=len(todo), desc=f"pass {number} (shards)") if progress and runtime.is_main else todo
    for shard in shards:
        work.save(number, shard, compute(shard))
        computed += 1
    report.computed[f"pass{number}"], report.resumed[f"pass{number}"] = computed, resumed


def _skipped_tensor(skipped: list[str]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(skipped).encode("utf-8")), dtype=torch.uint8)


@torch.inference_mode()
def _pass1_shard(bundle, image_set, plan, layers, shard) -> dict[str, torch.Tensor]:
    info, device = bundle.info, bundle.device
    visual, folded = bundle.model.visual, fold_weights(bundle.model.visual)
    start, stop = plan.shard_range(shard, image_set.count)
    heads_layer = torch.tensor([h[0] for h in plan.heads], device=device)
    heads_index = torch.tensor([h[1] for h in plan.heads], device=device)
    f64 = dict(dtype=torch.float64, device=device)
    head_sum = torch.zeros(info.n_layers, info.n_heads, info.d_out, **f64)
    span_sum = torch.zeros(len(plan.heads), info.d_out, **f64)
    span_gram = torch.zeros(len(plan.heads), info.d_out, info.d_out, **f64)
    neuron_sums = {layer: torch.zeros(basis.d_mlp, info.d_out, **f64) for layer, basis in layers.items()}
    count, skipped = 0, []
    for _, pixels in image_set.slice(start, stop).batches(bundle.preprocess, plan.options.batch_size, skipped,
                                                          plan.loader_threads):
        trace = trace_vit(visual, pixels.to(device), mlp_layers=list(layers))
        heads = direct_effects(trace, folded, convention=plan.convention).scores().heads.float()  # [b, L, H, d]
        head_sum += heads.sum(0, dtype=torch.float64)
        accumulate(span_sum, span_gram, heads[:, heads_layer, heads_index].transpose(0, 1))
        for layer, basis in layers.items():
            phi = second_order_effects(trace, basis, mode=plan.options.mode, coefficient=plan.options.coefficient)
            neuron_sums[layer] += phi.sum(0, dtype=torch.float64)
        count += pixels.shape[0]
    return {"count": torch.tensor([count], dtype=torch.float64), "head_sum": head_sum, "span_sum": span_sum,
            "span_gram": span_gram,
            **{f"neuron_sum_L{layer}": total for layer, total in neuron_sums.items()},
            "skipped": _skipped_tensor(skipped)}


def _pass1_layout(bundle: ClipBundle, plan: BasesPlan) -> list[tuple[str, tuple[int, ...]]]:
    info = bundle.info
    d_mlp = {layer: second_order_basis(bundle.model.visual, layer).d_mlp for layer in plan.neuron_layers}
    return ([("count", (1,)), ("head_sum", (info.n_layers, info.n_heads, info.d_out)),
             ("span_sum", (len(plan.heads), info.d_out)), ("span_gram", (len(plan.heads), info.d_out, info.d_out))]
            + [(f"neuron_sum_L{layer}", (d_mlp[layer], info.d_out)) for layer in plan.neuron_layers])


def _merge_pass1(bundle, plan, work, n_shards, count, runtime) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
    """The pass-1 totals, the same bits for any world size, and each shard's image count."""
    layout = _pass1_layout(bundle, plan)
    numel = sum(int(torch.Size(shape).numel()) for _, shape in layout)
    counts: dict[int, int] = {}

    def partial(shard: int) -> torch.Tensor | None:
        if shard % runtime.world_size != runtime.rank:
            return None
        stored = work.load(1, shard)
        return torch.cat([stored[name].reshape(-1).to(torch.float64) for name, _ in layout])

    flat = rt.reduce_slots(runtime, n_shards, partial, numel, stage="the pass-1 merge")
    # per-shard counts (pass 2 checks the images did not change): small, gathered once
    mine = {shard: int(work.load(1, shard)["count"][0])
            for shard in rt.owned(range(n_shards), runtime)}
    for part in rt.gather_json(runtime, {str(k): v for k, v in mine.items()}):
        counts.update({int(k): v for k, v in part.items()})
    totals, offset = {}, 0
    for name, shape in layout:
        size = int(torch.Size(shape).numel())
        totals[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    totals["count"] = totals["count"][0]
    return totals, counts


@torch.inference_mode()
def _pass2_shard(bundle, image_set, plan, layers, means, tops, shard, expected) -> dict[str, torch.Tensor]:
    visual, device = bundle.model.visual, bundle.device
    start, stop = plan.shard_range(shard, image_set.count)
    seen = 0
    for ids, pixels in image_set.slice(start, stop).batches(bundle.preprocess, plan.options.batch_size, [],
                                                            plan.loader_threads):
        trace = trace_vit(visual, pixels.to(device), mlp_layers=list(layers))
        for layer, basis in layers.items():
            phi = second_order_effects(trace, basis, mode=plan.options.mode, coefficient=plan.options.coefficient)
            deviations = phi - means[layer]
            tops[layer].update(deviations.norm(dim=-1).T, ids, deviations.transpose(0, 1))
        seen += pixels.shape[0]
    if seen != expected:
        raise DatasetError(f"the image set changed between the two passes (shard {shard}: {expected} readable "
                           f"images, then {seen}); keep the images unchanged while the bases are built")
    partial = {}
    for layer, top in tops.items():
        partial.update({f"L{layer}_{name}": value for name, value in top.entries_in(start, stop).items()})
    return partial


def _resume_pass2(tops: dict[int, RunningTopK], stored: dict[str, torch.Tensor]) -> None:
    for layer, top in tops.items():
        prefix = f"L{layer}_"
        top.update_entries({name[len(prefix):]: value for name, value in stored.items() if name.startswith(prefix)})


def _skipped(work: Path, shards: list[int]) -> list[str]:
    found = []
    for shard in shards:
        stored = work.read(1, shard)
        if stored is not None:
            found += json.loads(bytes(stored["skipped"].tolist()).decode("utf-8"))
    return found


def _remove_partials(work: _Work, shards: list[int]) -> None:
    for number in (1, 2):
        for shard in shards:
            work.drop(number, shard)


# ---------------------------------------------------------------- writing (rank 0)


def _write_artifact(writer, bundle, image_set, texts, plan, totals, means, tops, report, progress) -> Path:
    count = report.images
    embeddings = encode_texts(bundle, texts).cpu()
    stats = HeadStatistics(count, totals["span_sum"].contiguous(), totals["span_gram"].contiguous())
    result = text_span_from_stats(stats, embeddings, n_texts=plan.per_head, rank=plan.rank,
                                       criterion=plan.criterion)
    head_means = (totals["head_sum"] / count).float()
    writer.add_tensors(MEANS_GROUP, {"mean": head_means, "count": torch.tensor([count])})
    for row, head in enumerate(plan.heads):
        writer.add_tensors(group_name(head), result_tensors(result, row))
    writer.add_table(TABLE, table_rows(plan.heads, result, texts))
    layer_results = {}
    for layer, top in tops.items():
        layer_results[layer] = write_neuron_layer(
            writer, layer, mean=means[layer], count=count, top_norms=top.norms.float(), top_images=top.ids,
            top_vectors=top.vectors, embeddings=embeddings, n_terms=plan.n_terms, options=plan.options,
            progress=progress)
    metrics = write_neuron_tables(writer, plan.neuron_layers, texts, image_set, layer_results) if tops else {}
    if plan.circuits:
        from core.circuits.bases import write_circuit_group

        for layer, (stats, _) in layer_results.items():
            write_circuit_group(writer, bundle.model.visual, layer, stats.pcs)
    if not tops and not writer.has("image_set"):
        writer.add_json("image_set", image_set.record())
    if report.skipped:
        writer.add_json("skipped_images", report.skipped)
    metrics = {**textspan_metrics(result, count, len(plan.heads)), **metrics,
               "world_size": report.world_size, "shards": report.shards}
    return writer.finalize(metrics=metrics, notes=f"built over {report.shards} shard(s) of {plan.shard_size} images "
                           f"by {report.world_size} process(es); the result does not depend on the process count")
