"""Attention heads over image sets: their contributions, their spans, TextSpan on them, per-image views.

A head's contribution here is the paper's: its direct effect on the image representation, summed
over tokens and divided by |y| (`DirectEffects.scores()`), so that all components of an image sum
to the unit representation y/|y|. The default head set is every head of the last 4 layers.

    heads = default_heads(bundle.info)                       # [(layer, head), ...]
    fitted = head_outputs(bundle, paths, heads)              # outputs [head, image, d_out], held once
    result = fit_text_span(fitted.outputs, text_embeddings, n_texts=20)   # core.heads.textspan defaults
    streamed = head_statistics(bundle, paths, heads)         # count, sum, Gram per head: memory independent of images
    result = fit_text_span(streamed.stats, text_embeddings, n_texts=20)  # the same texts
    span = weight_span_bases(bundle.model.visual, heads)     # for span="weights"
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from PIL import Image

from core.progress import Progress, track
from core.engine.contributions import direct_effects, fold_weights
from core.errors import ConfigError, DatasetError, TextError, check_index
from core.engine.images import iter_image_batches, load_image
from core.engine.imagesets import ImageSet, image_batches
from core.engine.labels import head_label
from core.engine.models import ClipBundle, ModelInfo
from core.heads.textspan import HeadStatistics, TextSpanResult, text_span, text_span_from_stats
from core.engine.trace import trace_vit

DEFAULT_LAST_LAYERS = 4
# Singular values below this fraction of the largest are dropped from a weights span.
SPAN_TOLERANCE = 1e-6

Head = tuple[int, int]


# ---------------------------------------------------------------- choosing heads

def default_heads(info: ModelInfo, last_layers: int = DEFAULT_LAST_LAYERS) -> list[Head]:
    """Every head of the model's last `last_layers` layers (all layers if it has fewer)."""
    return heads_of_layers(info, range(max(0, info.n_layers - last_layers), info.n_layers))


def heads_of_layers(info: ModelInfo, layers: Iterable[int]) -> list[Head]:
    """Every head of each of `layers`, checked against the model."""
    return check_heads([(layer, head) for layer in layers for head in range(info.n_heads)], info)


def parse_heads(text: str) -> list[Head]:
    """'10.3,11.0' (layer.head, comma- or space-separated) -> [(10, 3), (11, 0)]."""
    items = [item for item in (text or "").replace(",", " ").split() if item]
    try:
        heads = [(int(layer), int(head)) for layer, head in (item.split(".") for item in items)]
    except ValueError as err:
        raise ConfigError(f"heads must look like 10.3,11.0 (layer.head), got {text!r}") from err
    if not heads:
        raise ConfigError("no heads given; list them as layer.head, e.g. 10.3,11.0")
    return heads


def check_heads(heads: Iterable[Sequence[int]], info: ModelInfo) -> list[Head]:
    """Heads as (layer, head) int pairs inside the model, duplicates removed (first kept)."""
    checked: list[Head] = []
    for pair in heads:
        if len(pair) != 2:
            raise ConfigError(f"a head is a (layer, head) pair, got {pair!r}")
        layer, head = pair
        head_pair = (check_index("layer", layer, info.n_layers), check_index("head", head, info.n_heads))
        if head_pair not in checked:
            checked.append(head_pair)
    if not checked:
        raise ConfigError("no heads chosen")
    return checked


def head_name(head: Head) -> str:
    """'L10H3' for (10, 3) (core.engine.labels names every component)."""
    return head_label(*head)


# ---------------------------------------------------------------- head outputs over an image set

class HeadOutputs(NamedTuple):
    """Normalised head contributions over an image set.

    outputs: [head, image, d_out] float32, for `heads` in that order.
    head_means: [layer, head, d_out] mean over the images of EVERY head of the model
        (what mean-ablation replaces a head by).
    count: images used (unreadable files are skipped).
    """

    outputs: torch.Tensor
    heads: list[Head]
    head_means: torch.Tensor
    count: int


@torch.no_grad()
def image_head_contributions(bundle: ClipBundle, pixels: torch.Tensor, *, convention: str = "paper") -> torch.Tensor:
    """[batch, layer, head, d_out]: every head's direct effect divided by |y|, for pixels [batch, 3, H, W]."""
    visual = bundle.model.visual
    trace = trace_vit(visual, pixels.to(bundle.device))
    return direct_effects(trace, fold_weights(visual), convention=convention).scores().heads


class StreamedHeadStatistics(NamedTuple):
    """Sufficient statistics of normalised head contributions over an image set (see HeadOutputs).

    stats: HeadStatistics (count, sum [head, d_out], Gram [head, d_out, d_out], float64) for `heads`.
    head_means: [layer, head, d_out] mean over the images of EVERY head of the model.
    count: images used (unreadable files are skipped).
    """

    stats: HeadStatistics
    heads: list[Head]
    head_means: torch.Tensor
    count: int


def _stream_heads(bundle: ClipBundle, batches: Iterable[torch.Tensor], heads: Sequence[Head], convention: str,
                  consume: Callable[[torch.Tensor], None]) -> tuple[list[Head], torch.Tensor, int]:
    """Feed each batch's chosen-head contributions [head, batch, d_out] to `consume`; (heads, head_means, count)."""
    heads = check_heads(heads, bundle.info)
    info = bundle.info
    layers = torch.tensor([l for l, _ in heads])
    indices = torch.tensor([h for _, h in heads])
    sums = torch.zeros(info.n_layers, info.n_heads, info.d_out, dtype=torch.float64)
    count = 0
    for pixels in batches:
        contributions = image_head_contributions(bundle, pixels, convention=convention).cpu().float()
        consume(contributions[:, layers, indices].transpose(0, 1))
        sums += contributions.sum(0, dtype=torch.float64)
        count += contributions.shape[0]
    if count == 0:
        raise DatasetError("no readable images to compute head outputs from")
    return heads, (sums / count).float(), count


@torch.no_grad()
def head_outputs_from_batches(
    bundle: ClipBundle,
    batches: Iterable[torch.Tensor],
    heads: Sequence[Head],
    *,
    capacity: int,
    convention: str = "paper",
) -> HeadOutputs:
    """Stream pixel batches [batch, 3, H, W] into one preallocated [head, image, d_out] tensor.

    capacity: the most images the batches can hold (the tensor is allocated once; a copy is made
    only when fewer images arrived, e.g. unreadable files were skipped).
    """
    outputs = torch.empty(len(check_heads(heads, bundle.info)), capacity, bundle.info.d_out)
    filled = 0

    def store(chosen):
        nonlocal filled
        if filled + chosen.shape[1] > capacity:
            raise ConfigError(f"more images arrived than the capacity of {capacity}; pass the true image count")
        outputs[:, filled : filled + chosen.shape[1]] = chosen
        filled += chosen.shape[1]

    heads, head_means, count = _stream_heads(bundle, batches, heads, convention, store)
    if count < capacity:
        outputs = outputs[:, :count].clone()
    return HeadOutputs(outputs, heads, head_means, count)


@torch.no_grad()
def head_statistics_from_batches(
    bundle: ClipBundle,
    batches: Iterable[torch.Tensor],
    heads: Sequence[Head],
    *,
    convention: str = "paper",
) -> StreamedHeadStatistics:
    """TextSpan's sufficient statistics of `heads` over pixel batches, one batch at a time.

    Memory is the float64 Gram matrices ([head, d_out, d_out]), whatever the number of images.
    Batches are accumulated in the order they arrive (fixed batches give the same bits).
    """
    total = HeadStatistics.zeros(len(check_heads(heads, bundle.info)), bundle.info.d_out)

    def accumulate(chosen):
        nonlocal total
        total = total.merge(HeadStatistics.from_outputs(chosen))

    heads, head_means, count = _stream_heads(bundle, batches, heads, convention, accumulate)
    return StreamedHeadStatistics(total, heads, head_means, count)


def head_outputs(
    bundle: ClipBundle,
    images: ImageSet | Sequence,
    heads: Sequence[Head],
    *,
    convention: str = "paper",
    batch_size: int = 32,
    progress: Progress | None = None,
    skipped: list[str] | None = None,
) -> HeadOutputs:
    """Head outputs over `images` (an ImageSet, or a list of image files; unreadable ones named in `skipped` if given)."""
    batches = (pixels for _, pixels in image_batches(images, bundle.preprocess, batch_size, skipped))
    return head_outputs_from_batches(bundle, track(progress, batches, "head outputs", -(-len(images) // batch_size)), heads,
                                     capacity=len(images), convention=convention)


def head_statistics(
    bundle: ClipBundle,
    images: ImageSet | Sequence,
    heads: Sequence[Head],
    *,
    convention: str = "paper",
    batch_size: int = 32,
    progress: Progress | None = None,
    skipped: list[str] | None = None,
) -> StreamedHeadStatistics:
    """TextSpan's sufficient statistics over `images` (an ImageSet, or a list of image files; see
    head_statistics_from_batches)."""
    batches = (pixels for _, pixels in image_batches(images, bundle.preprocess, batch_size, skipped))
    tracked = track(progress, batches, "head outputs (image batches)", -(-len(images) // batch_size))
    return head_statistics_from_batches(bundle, tracked, heads,
                                        convention=convention)


def pil_batches(bundle: ClipBundle, images: Iterable[Image.Image], batch_size: int = 32) -> Iterable[torch.Tensor]:
    """[batch, 3, H, W] batches of PIL images through the model's preprocessing."""
    batch = []
    for image in images:
        batch.append(bundle.preprocess(image))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


# ---------------------------------------------------------------- spans and TextSpan

@torch.no_grad()
def weight_span_bases(visual: torch.nn.Module, heads: Sequence[Head]) -> list[torch.Tensor]:
    """Per head, orthonormal rows [rank, d_out] spanning every output the head can make.

    The normalised output of head (l, h) is a combination of the rows of
    W_O[l, h] diag(gamma) P ([d_head, d_out]) and three constant offsets: its
    out-proj bias share, the final LayerNorm's mean share (1^T diag(gamma) P)
    and its beta share (beta P). Directions below SPAN_TOLERANCE are dropped
    (e.g. zero biases of a random init), so rank <= d_head + 3.
    """
    folded = fold_weights(visual)
    bases = []
    for layer, head in heads:
        rows = torch.cat([folded.head_out[layer, head], folded.out_bias[layer][None],
                          folded.ones_proj[None], folded.beta_proj[None]]).double()
        _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
        bases.append(vh[singular > SPAN_TOLERANCE * singular[0]].float())
    return bases


def fit_text_span(
    outputs: torch.Tensor | HeadStatistics,
    text_embeddings: torch.Tensor,
    *,
    n_texts: int = 20,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    span_bases: Sequence[torch.Tensor] | None = None,
) -> TextSpanResult:
    """TextSpan for every head of `outputs` (see core.heads.textspan.text_span).

    outputs: head outputs [head, image, d_out], or their HeadStatistics (then floats come back in float32).
    span "weights" takes `span_bases` (one [rank, d_out] per head, e.g. from
    weight_span_bases; ranks may differ: heads of equal rank run together).
    params["ranks"] lists the rank each head's span had (for span "data", at most
    its numerical rank).
    """
    from_stats = isinstance(outputs, HeadStatistics)
    n_head = outputs.sum.shape[0] if from_stats else outputs.shape[0]

    def fit(members, **kwargs):
        if from_stats:
            source = outputs if members is None else outputs.select(members)
            return text_span_from_stats(source, text_embeddings, n_texts=n_texts, criterion=criterion, **kwargs)
        source = outputs if members is None else outputs[members]
        return text_span(source, text_embeddings, n_texts=n_texts, criterion=criterion, **kwargs)

    if span != "weights":
        if span_bases is not None:
            raise ConfigError("span_bases is only used with span='weights'")
        return fit(None, rank=rank, span=span)
    if span_bases is None or len(span_bases) != n_head:
        raise ConfigError(f"span 'weights' needs one basis per head ({n_head}); use weight_span_bases")
    ranks = [int(basis.shape[0]) for basis in span_bases]
    if rank is not None and any(r != rank for r in ranks):
        raise ConfigError(f"--rank {rank} disagrees with the weights span, whose rank is {sorted(set(ranks))} "
                          "(head dimension plus offsets); omit the rank with span 'weights'")
    parts = []
    for group_rank in sorted(set(ranks)):
        members = [i for i, r in enumerate(ranks) if r == group_rank]
        dtype = torch.float32 if from_stats else outputs.dtype
        bases = torch.stack([span_bases[i] for i in members]).to(dtype)
        parts.append((members, fit(None if len(members) == n_head else members, span="weights", span_bases=bases)))
    return _merge(parts, n_head, ranks)


def _merge(parts: list[tuple[list[int], TextSpanResult]], n_head: int, ranks: list[int]) -> TextSpanResult:
    """One TextSpanResult, heads in their original order, from results over groups of heads."""
    if len(parts) == 1:
        result = parts[0][1]
        return result._replace(params={**result.params, "ranks": ranks})
    fields = {}
    for name in ("text_indices", "variance_explained", "cumulative_variance", "mean", "directions", "total_variance"):
        first = getattr(parts[0][1], name)
        merged = first.new_empty((n_head, *first.shape[1:]))
        for members, result in parts:
            merged[members] = getattr(result, name)
        fields[name] = merged
    params = {**parts[0][1].params, "rank": max(ranks), "ranks": ranks}
    return TextSpanResult(**fields, params=params)


def select_heads(result: TextSpanResult, rows: Sequence[int]) -> TextSpanResult:
    """The TextSpanResult of some of its heads (rows in result order)."""
    rows = list(rows)
    ranks = result.params.get("ranks")
    params = {**result.params, **({"ranks": [ranks[r] for r in rows]} if ranks else {})}
    return TextSpanResult(result.text_indices[rows], result.variance_explained[rows], result.cumulative_variance[rows],
                          result.mean[rows], result.directions[rows], result.total_variance[rows], params)


# ---------------------------------------------------------------- one image

def rank_heads(scores: torch.Tensor, k: int | None = None, *, magnitude: bool = False) -> list[dict]:
    """Heads of a [layer, head] score matrix sorted by score (by |score| with `magnitude`), highest first:
    [{layer, head, score}] with the score's sign kept. The one head ranking of the suite."""
    n_heads = scores.shape[1]
    key = scores.flatten().abs() if magnitude else scores.flatten()
    order = torch.argsort(key, descending=True, stable=True)[: k or scores.numel()]  # ties: by index
    return [{"layer": int(i) // n_heads, "head": int(i) % n_heads, "score": float(scores.flatten()[i])} for i in order]


def head_token_maps(tokens: torch.Tensor, grid: tuple[int, int], head: Head) -> torch.Tensor:
    """[text, grid_h, grid_w] one head's patch-token scores per text, from tokens [layer, head, token, text]."""
    layer, index = head
    check_index("layer", layer, tokens.shape[0])
    check_index("head", index, tokens.shape[1])
    return tokens[layer, index, 1:].T.reshape(-1, *grid)


def difference_map(maps: torch.Tensor) -> torch.Tensor:
    """[grid_h, grid_w]: the first text's map minus the second's, from maps [2, grid_h, grid_w]."""
    if maps.shape[0] != 2:
        raise TextError(f"a difference map needs exactly two texts, got {maps.shape[0]}")
    return maps[0] - maps[1]


@torch.no_grad()
def image_head_texts(
    bundle: ClipBundle,
    image: Image.Image | str,
    head: Head,
    text_embeddings: torch.Tensor,
    *,
    k: int = 10,
    convention: str = "paper",
) -> list[tuple[int, float]]:
    """The pool texts the head's contribution to this image points at most: [(text index, score)].

    score = <head contribution / |y|, t> for unit text t (the head's share of cos(image, t)).
    """
    (layer, index), = check_heads([head], bundle.info)
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != bundle.info.d_out:
        raise TextError(f"text embeddings must be [text, {bundle.info.d_out}], got {list(text_embeddings.shape)}")
    pil = image if isinstance(image, Image.Image) else load_image(image)
    pixels = bundle.preprocess(pil).unsqueeze(0).to(bundle.device)
    visual = bundle.model.visual
    trace = trace_vit(visual, pixels)
    units = torch.nn.functional.normalize(text_embeddings.to(bundle.device).float(), dim=-1)
    scores = direct_effects(trace, fold_weights(visual), convention=convention, directions=units).scores()
    head_scores = scores.heads[0, layer, index].cpu()
    indices = torch.argsort(head_scores, descending=True, stable=True)[:k]  # ties: lower text index first
    return [(int(i), float(head_scores[i])) for i in indices]
