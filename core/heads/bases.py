"""TextSpan results as a bases artifact (core.artifacts.store): a resumable, per-head build, and reading them back.

An artifact written by `build_textspan_bases` + `finish_textspan_bases` holds
    tensors/textspan_L<l>H<h>   per head: indices [n] (pool order), variance_explained [n],
                                cumulative [n], mean [d_out], directions [n, d_out], total_variance [1], rank [1]
    tensors/head_means          mean [layer, head, d_out] of every head over the images, count [1]
    tables/textspan             rows layer, head, rank, order, text_index, text, variance_explained,
                                cumulative_variance
    extra/completeness          (optional) the completeness check, also summarised in the metrics
Each head's group is written as soon as it is computed, so an interrupted build keeps the heads
it finished and a rerun of the same command skips them. The expensive pass over the images is
streamed into TextSpan's sufficient statistics (count, sum and Gram matrix of each head's outputs,
core.heads.textspan.HeadStatistics: memory independent of the number of images), which are cached
under the clipscope cache (`textspan-work/`, keyed by model, files, heads and convention; the
artifact folder itself only holds artifact files) and removed once the artifact is finalised.
`rank` in each head's tensors and table rows is the rank its span actually had (at most the
numerical rank of its outputs); the manifest's metrics give the smallest and largest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file

from core.artifacts.store import Artifact, ArtifactWriter, text_pool_identity
from core.errors import BasesError, ConfigError
from core.heads.outputs import (Head, HeadOutputs, StreamedHeadStatistics, check_heads, fit_text_span, head_name,
                                head_outputs_from_batches, head_statistics, weight_span_bases)
from core.engine.labels import parse_label
from core.engine.models import ClipBundle
from core.engine.text import cache_dir, encode_texts
from core.heads.textspan import CRITERIA, DEFAULT_RANK, RANK_RTOL, SPANS, HeadStatistics, TextSpanResult

GROUP_PREFIX = "textspan_"
MEANS_GROUP = "head_means"
TABLE = "textspan"
COMPLETENESS = "completeness"
CHUNK_HEADS = 8  # heads fitted (and then written) together: batched speed, fine-grained resume

# progress(iterable, total=..., desc=...) -> iterable, e.g. tqdm.tqdm or gr.Progress().tqdm
ProgressFactory = Callable[..., Iterable]


def group_name(head: Head) -> str:
    return GROUP_PREFIX + head_name(head)


def result_tensors(result: TextSpanResult, row: int) -> dict[str, torch.Tensor]:
    """The tensors stored for one head (row of `result`)."""
    ranks = result.params.get("ranks") or [result.params["rank"]] * len(result.text_indices)
    return {"indices": result.text_indices[row], "variance_explained": result.variance_explained[row],
            "cumulative": result.cumulative_variance[row], "mean": result.mean[row],
            "directions": result.directions[row], "total_variance": result.total_variance[row].reshape(1),
            "rank": torch.tensor([int(ranks[row])])}


def result_from_tensors(groups: Sequence[dict[str, torch.Tensor]], params: dict) -> TextSpanResult:
    """A TextSpanResult over heads from their stored tensors (result_tensors), in the given order."""
    def stack(key):
        return torch.stack([g[key] for g in groups])

    ranks = [int(g["rank"][0]) for g in groups]
    return TextSpanResult(stack("indices"), stack("variance_explained"), stack("cumulative"), stack("mean"),
                          stack("directions"), stack("total_variance")[:, 0],
                          {**params, "rank": params.get("rank") or max(ranks), "ranks": ranks})


def table_rows(heads: Sequence[Head], result: TextSpanResult, texts: Sequence[str]) -> list[dict]:
    """One row per (head, selected text), in selection order."""
    ranks = result.params.get("ranks") or [result.params["rank"]] * len(heads)
    rows = []
    for row, (layer, head) in enumerate(heads):
        for order, (index, explained, cumulative) in enumerate(zip(
                result.text_indices[row].tolist(), result.variance_explained[row].tolist(),
                result.cumulative_variance[row].tolist())):
            rows.append({"layer": layer, "head": head, "rank": int(ranks[row]), "order": order, "text_index": index,
                         "text": texts[index], "variance_explained": float(explained),
                         "cumulative_variance": float(cumulative)})
    return rows


def head_text_rows(artifact: Artifact, head: Head) -> list[dict]:
    """The stored texts of one head, in selection order (empty if the artifact lacks that head)."""
    layer, index = head
    rows = [row for row in artifact.table(TABLE) if row["layer"] == layer and row["head"] == index]
    return sorted(rows, key=lambda row: row["order"])


def head_texts_from_bases(bases: Artifact, head: str | Head) -> list[tuple[str, float]]:
    """(text, share of the head's output variance it explains) for one head of loaded bases, in TextSpan's
    selection order. `head` is a label ("L3H1") or (layer, head); ConfigError names the stored heads when the
    bases lack it. For the full table rows (rank, cumulative variance): `head_text_rows`."""
    chosen = _head_of(head)
    rows = head_text_rows(bases, chosen) if bases.has(TABLE) else []
    if not rows:
        stored = ", ".join(head_name(h) for h in artifact_heads(bases)) or "none"
        raise ConfigError(f"the bases at {bases.path} hold no TextSpan texts for head {head_name(chosen)} "
                          f"(stored heads: {stored})")
    return [(row["text"], float(row["variance_explained"])) for row in rows]


def _head_of(head: str | Head) -> Head:
    if isinstance(head, str):
        component = parse_label(head)
        if component.kind != "head":
            raise ConfigError(f"{head!r} names a {component.kind}, not an attention head (e.g. L3H1)")
        return component.layer, component.index
    try:
        layer, index = head
        return int(layer), int(index)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"a head is a label such as L3H1 or a (layer, head) pair, got {head!r}") from err


def artifact_heads(artifact: Artifact) -> list[Head]:
    """Heads with a stored TextSpan group."""
    heads = []
    for name in artifact.names("tensors"):
        if name.startswith(GROUP_PREFIX + "L") and "H" in name:
            layer, head = name[len(GROUP_PREFIX) + 1:].split("H")
            heads.append((int(layer), int(head)))
    return sorted(heads)


def artifact_result(artifact: Artifact, heads: Sequence[Head] | None = None) -> tuple[list[Head], TextSpanResult]:
    """(heads, TextSpanResult) read from an artifact (all its heads by default)."""
    heads = artifact_heads(artifact) if heads is None else list(heads)
    missing = [head_name(h) for h in heads if not artifact.has(group_name(h))]
    if missing or not heads:
        raise BasesError(f"the bases at {artifact.path} hold no TextSpan for {', '.join(missing) or 'any head'}")
    params = artifact.manifest["algorithms"].get("textspan", {})
    if not isinstance(params, dict):
        raise BasesError(f"the bases at {artifact.path} record TextSpan parameters {params!r}, not a dict")
    sizes: dict[str, int] = {}  # one n and one d_out across heads: a tampered file fails here, not in torch.stack
    pool = artifact.manifest.get("text_pool") or {}
    below = {"indices": pool["count"]} if isinstance(pool.get("count"), int) else None
    groups = [artifact.tensors(group_name(h), TEXTSPAN_SHAPES, sizes, integer=("indices", "rank"), below=below)
              for h in heads]
    return heads, result_from_tensors(groups, params)


# The stored tensors of one head (result_tensors); the check in artifact_result keeps their shapes consistent.
TEXTSPAN_SHAPES = {"indices": ("n",), "variance_explained": ("n",), "cumulative": ("n",), "mean": ("d_out",),
                   "directions": ("n", "d_out"), "total_variance": (1,), "rank": (1,)}


# ---------------------------------------------------------------- the build

@dataclass
class TextSpanBuild:
    """A TextSpan artifact written up to finalisation (see finish_textspan_bases)."""

    writer: ArtifactWriter
    heads: list[Head]
    result: TextSpanResult
    head_means: torch.Tensor  # [layer, head, d_out]
    texts: list[str]
    computed: list[Head]  # heads fitted by this run (the others were already written)
    image_count: int
    work_file: Path
    skipped: list[str] = field(default_factory=list)


def build_textspan_bases(
    bundle: ClipBundle,
    paths: Sequence,
    texts: list[str],
    heads: Sequence[Head],
    out: str | os.PathLike,
    *,
    pool_name: str,
    image_description: str,
    per_head: int = 20,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    convention: str = "paper",
    batch_size: int = 32,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    writer: ArtifactWriter | None = None,
) -> TextSpanBuild:
    """Fit TextSpan for `heads` on the images at `paths`, writing each head's group as it is done.

    Heads already written by an earlier run of the same build are skipped. Returns the build,
    not yet finalised: call finish_textspan_bases (after an optional completeness check).
    """
    heads, bases = _checked(bundle, heads, len(paths), len(texts), per_head, rank, criterion, span)
    params = textspan_build_params(per_head, rank, criterion, span)
    if writer is None:  # else: an open writer shared with other builds (python -m core bases build)
        writer = ArtifactWriter(out, model=bundle.info.identity(), text_pool=text_pool_identity(texts, pool_name),
                                image_set={"description": image_description, "count": len(paths)},
                                convention=convention, algorithms={"textspan": params}, overwrite=overwrite)
    pending = [h for h in heads if not writer.has(group_name(h))]
    work_file = _work_file(bundle, paths, heads, convention)
    fitted, skipped = None, []
    if pending or not writer.has(MEANS_GROUP):
        fitted, skipped = _head_statistics_cached(bundle, paths, heads, convention, batch_size, work_file, progress)
        if not writer.has(MEANS_GROUP):
            writer.add_tensors(MEANS_GROUP, {"mean": fitted.head_means, "count": torch.tensor([fitted.count])})
    embeddings = encode_texts(bundle, texts).cpu() if pending else None
    new = _fit_pending(fitted, embeddings, pending, bases, heads, writer, per_head, rank, criterion, span, progress)
    stored = writer.path / "tensors"
    groups = [new[h] if h in new else load_file(stored / f"{group_name(h)}.safetensors") for h in heads]
    result = result_from_tensors(groups, params)
    writer.add_table(TABLE, table_rows(heads, result, texts))
    means = load_file(stored / f"{MEANS_GROUP}.safetensors")
    return TextSpanBuild(writer, heads, result, means["mean"], texts, pending, int(means["count"][0]), work_file, skipped)


def _checked(bundle, heads, n_images, n_texts, per_head, rank, criterion, span):
    """(heads checked against the model, weight span bases or None); fails before any expensive pass."""
    heads = check_heads(heads, bundle.info)
    if span not in SPANS:
        raise ConfigError(f"unknown span {span!r}; choose one of {', '.join(SPANS)}")
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    bases = weight_span_bases(bundle.model.visual, heads) if span == "weights" else None
    _check_sizes(bundle, n_images, n_texts, per_head, rank, span, bases)
    return heads, bases


def textspan_build_params(per_head: int, rank: int | None, criterion: str, span: str) -> dict:
    """The parameters a TextSpan build records in its manifest (equal parameters => resumable).

    rank is the requested data-span rank, an upper bound: each head's span is capped at the numerical
    rank of its outputs (singular values above rank_rtol of the largest).
    """
    return {"n_texts": per_head, "rank": (DEFAULT_RANK if rank is None else rank) if span == "data" else None,
            "criterion": criterion, "span": span, "rank_rtol": RANK_RTOL if span == "data" else None}


def textspan_metrics(result, image_count: int, n_heads: int) -> dict:
    """What a TextSpan build records in its manifest's metrics: sizes, mean explained variance, effective ranks."""
    ranks = result.params["ranks"]
    return {"images": image_count, "heads": n_heads,
            "mean_cumulative_variance": float(result.cumulative_variance[:, -1].mean()),
            "textspan_rank_min": min(ranks), "textspan_rank_max": max(ranks)}


def finish_textspan_bases(build: TextSpanBuild, completeness: dict | None = None,
                          extra_metrics: dict[str, float] | None = None) -> Path:
    """Write the optional completeness record, finalise the artifact and drop the cached head outputs."""
    metrics = textspan_metrics(build.result, build.image_count, len(build.heads))
    if completeness is not None:
        build.writer.add_json(COMPLETENESS, completeness)
    if build.skipped:
        build.writer.add_json("skipped_images", build.skipped)
    path = build.writer.finalize(metrics={**metrics, **(extra_metrics or {})})
    build.work_file.unlink(missing_ok=True)
    return path


def _check_sizes(bundle, n_images, n_texts, per_head, rank, span, bases) -> None:
    """Fail before the expensive pass on what text_span would refuse after it."""
    if not isinstance(per_head, int) or per_head < 1:
        raise ConfigError(f"--per-head must be a positive integer, got {per_head!r}")
    if per_head > n_texts:
        raise ConfigError(f"--per-head {per_head} exceeds the {n_texts} texts of the pool")
    if span == "data":
        rank = DEFAULT_RANK if rank is None else rank
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"--rank must be a positive integer, got {rank!r}")
        if rank > bundle.info.d_out:
            raise ConfigError(f"--rank {rank} exceeds the model's output dimension {bundle.info.d_out}; lower it")
        if n_images < rank:
            raise ConfigError(f"fewer images ({n_images}) than the rank ({rank}): the data span needs at least "
                              f"{rank} images; use more images or a lower --rank")
        if per_head > rank:
            raise ConfigError(f"--per-head {per_head} exceeds the rank {rank}; lower --per-head")
        return
    if rank is not None:
        raise ConfigError("--rank applies to the data span; the weights span's rank is the head dimension plus "
                          "offsets, so omit --rank with --span weights")
    smallest = min(len(b) for b in bases)
    if per_head > smallest:
        raise ConfigError(f"--per-head {per_head} exceeds the weights span's rank {smallest}; lower --per-head")
    if n_images < 2:
        raise ConfigError(f"TextSpan needs at least 2 images, got {n_images}")


def _fit_pending(fitted: StreamedHeadStatistics | None, embeddings, pending, bases, heads, writer, per_head, rank,
                 criterion, span, progress) -> dict[Head, dict[str, torch.Tensor]]:
    """Fit pending heads CHUNK_HEADS at a time, writing each group at once; returns their tensors."""
    new: dict[Head, dict[str, torch.Tensor]] = {}
    chunks = [pending[i:i + CHUNK_HEADS] for i in range(0, len(pending), CHUNK_HEADS)]
    steps = progress(chunks, total=len(chunks), desc="TextSpan (chunks of heads)") if progress and chunks else chunks
    for chunk in steps:
        stats = fitted.stats.select([fitted.heads.index(h) for h in chunk])
        chunk_bases = [bases[heads.index(h)] for h in chunk] if bases is not None else None
        result = fit_text_span(stats, embeddings, n_texts=per_head, rank=rank, criterion=criterion,
                               span=span, span_bases=chunk_bases)
        for row, head in enumerate(chunk):
            new[head] = result_tensors(result, row)
            writer.add_tensors(group_name(head), new[head])
    return new


def _work_file(bundle: ClipBundle, paths: Sequence, heads: Sequence[Head], convention: str) -> Path:
    files = []
    for p in paths:
        try:
            stat = Path(p).stat()
            files.append([str(Path(p).resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([str(p), -1, -1])
    key = json.dumps([bundle.info.identity(), files, [list(h) for h in heads], convention, "statistics"],
                     sort_keys=True)
    return cache_dir() / "textspan-work" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def _head_statistics_cached(bundle, paths, heads, convention, batch_size, work_file: Path,
                            progress) -> tuple[StreamedHeadStatistics, list[str]]:
    """Head statistics from the work cache when an earlier run of this build left them, else computed and cached."""
    if work_file.is_file():
        try:
            stored = load_file(work_file)
            skipped = json.loads(bytes(stored["skipped"].tolist()).decode("utf-8"))
            stats = HeadStatistics.from_tensors(stored)
            if stats.gram.shape[0] != len(heads):
                raise ValueError("cached statistics cover other heads")
            return StreamedHeadStatistics(stats, list(heads), stored["head_means"], stats.count), skipped
        except Exception:  # a damaged cache is recomputed, never trusted
            work_file.unlink(missing_ok=True)
    skipped: list[str] = []
    n_batches = -(-len(paths) // batch_size)
    wrap = (lambda it: progress(it, total=n_batches, desc="head outputs (image batches)")) if progress else None
    fitted = head_statistics(bundle, paths, heads, convention=convention, batch_size=batch_size, progress=wrap,
                             skipped=skipped)
    work_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = work_file.with_name(f".{work_file.name}.{os.getpid()}.tmp")
    encoded = torch.tensor(list(json.dumps(skipped).encode("utf-8")), dtype=torch.uint8)
    save_file({**fitted.stats.tensors(), "head_means": fitted.head_means, "skipped": encoded}, tmp)
    os.replace(tmp, work_file)
    return fitted, skipped


def fit_in_memory(
    bundle: ClipBundle,
    batches: Iterable[torch.Tensor],
    capacity: int,
    text_embeddings: torch.Tensor,
    heads: Sequence[Head],
    *,
    per_head: int,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    convention: str = "paper",
) -> tuple[TextSpanResult, HeadOutputs]:
    """TextSpan over pixel batches without writing anything (the tab's compute button)."""
    fitted = head_outputs_from_batches(bundle, batches, heads, capacity=capacity, convention=convention)
    bases = weight_span_bases(bundle.model.visual, fitted.heads) if span == "weights" else None
    result = fit_text_span(fitted.outputs, text_embeddings, n_texts=per_head, rank=rank, criterion=criterion,
                           span=span, span_bases=bases)
    return result, fitted
