"""TextSpan: label each attention head with the texts that explain its outputs.

Greedy algorithm of Gandelsman et al. (ICLR 2024), as in the paper code
(`compute_complete_text_set.py`, `replace_with_iterative_removal`): restrict
the text pool to a `rank`-dimensional span of the head, centre the head's
outputs over the images, then `n_texts` times pick the text whose direction
captures the most of the remaining variation, deflate the outputs and
Gram-Schmidt-deflate every text against it.

How `text_span` computes it (same numbers as the literal loop, far cheaper):

* Only the centred Gram matrix G = C^T C [d_out, d_out] of each head is
  needed, because every quantity of the loop is a quadratic form in it:
  the std over images of <c, u> is sqrt(u^T G u / (image - 1)), and the
  variance explained by u is u^T G u / ||u||^2.
* Every text lies in the head's span after projection, so the loop works in
  span coordinates (orthonormal basis B [rank, d_out]): G becomes
  B G B^T [rank, rank], and each deflation is a rank-1 update of it and of
  two numbers per text (||u||^2 and u^T G u).
* The deflated dictionary is never materialised: the dot products a step
  needs are those of the undeflated texts with the current pick (deflation
  only removes directions orthogonal to it), one [text, d_out] x
  [d_out, 2 * head] matmul for all heads per step, with no host
  synchronisation inside the loop.

Memory: the head outputs are read, never copied whole. Per-head statistics
(mean, Gram, span, initial scores) are computed `chunk_heads` heads at a time
in a float64 workspace of about 8 * (image*d_out + 3*d_out^2 + 3*text*rank)
bytes per head (21 MB for 2,000 images, 3,498 texts, d_out 512, rank 80;
the default chunk keeps it under `WORKSPACE_BYTES`). The loop then holds,
for all heads together, the float64 texts once plus
8 * (rank*d_out + rank^2 + 2*text) bytes per head (0.4 MB at that size).

Departures from the paper code, all inert on well-posed input: the span is
computed in float64 from the Gram matrix (eigh) rather than a float32 SVD,
and a text whose deflated norm fell below `MIN_TEXT_NORM` (relative to the
largest text embedding) is never picked, so duplicates of a chosen text cannot
be picked for their rounding noise under the normalised criterion.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from core.errors import ConfigError, TextError, check_index

CRITERIA = ("std", "explained_variance")
SPANS = ("data", "weights")
DEFAULT_RANK = 80
MIN_TEXT_NORM = 1e-4
WORKSPACE_BYTES = 128 * 2**20


class TextSpanResult(NamedTuple):
    """What TextSpan found for each head.

    text_indices: LongTensor [head, n_texts], pool indices in selection order.
    variance_explained: [head, n_texts], fraction of the head's total variance
        (sum over images of ||c - mean||^2) captured by each selected text's
        deflated direction.
    cumulative_variance: [head, n_texts], running sum of variance_explained.
    mean: [head, d_out], mean head output over the fit images.
    directions: [head, n_texts, d_out], the deflated, mutually orthogonal
        (not unit) text directions actually used; `reconstruct` needs them.
    total_variance: [head], sum over images of ||c - mean||^2.
    params: dict with criterion, span, rank and n_texts.
    """

    text_indices: torch.Tensor
    variance_explained: torch.Tensor
    cumulative_variance: torch.Tensor
    mean: torch.Tensor
    directions: torch.Tensor
    total_variance: torch.Tensor
    params: dict


def text_span(
    head_outputs: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    n_texts: int = 20,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    span_bases: torch.Tensor | None = None,
    chunk_heads: int | None = None,
) -> TextSpanResult:
    """Pick `n_texts` texts per head that explain the head's output variance.

    head_outputs: [head, image, d_out], each head's direct contribution to the
        image representation, summed over tokens.
    text_embeddings: [text, d_out], L2-normalised text embeddings of the pool.
    rank: dimension of the span the texts are projected on. Default 80 for
        span "data"; for span "weights" it is span_bases' rank (an explicit
        value must agree).
    criterion: "std" (paper code: std over images of the unnormalised dot
        product with the deflated text) or "explained_variance" (paper's
        stated objective: variance explained by the normalised direction).
    span: "data" (top-`rank` right singular vectors of the uncentred head
        outputs, as the paper code) or "weights" (rows of `span_bases`).
    span_bases: [head, rank, d_out], any basis (not necessarily orthonormal)
        of each head's span, e.g. from W_OV; only with span "weights".
    chunk_heads: heads whose statistics are computed together (the memory
        bound); default sized to WORKSPACE_BYTES. The greedy loop itself runs
        on all heads at once.
    Returns a TextSpanResult; floats in head_outputs' dtype. Raises
    ConfigError (TextError for a text pool of the wrong dimension) on bad input.
    """
    rank = _validate(head_outputs, text_embeddings, n_texts, rank, criterion, span, span_bases, chunk_heads)
    n_head, n_image, d_out = head_outputs.shape
    chunk = chunk_heads or _default_chunk_heads(n_image, len(text_embeddings), d_out, rank)
    texts = text_embeddings.to(head_outputs.device, torch.float64)
    min_norm = MIN_TEXT_NORM * float(texts.norm(dim=1).max())
    parts = []
    for start in range(0, n_head, chunk):
        heads = slice(start, start + chunk)
        bases = None if span_bases is None else span_bases[heads]
        parts.append(_head_statistics(head_outputs[heads], texts, bases, rank))
    stats = _HeadStatistics(*(torch.cat(field) for field in zip(*parts)))
    indices, captured_by_pick, picked = _greedy_select(texts, stats, n_texts, criterion, min_norm)
    _check_no_degenerate_pick(picked, min_norm)
    explained = captured_by_pick / stats.total.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    dtype = head_outputs.dtype
    return TextSpanResult(
        text_indices=indices,
        variance_explained=explained.to(dtype),
        cumulative_variance=explained.cumsum(1).to(dtype),
        mean=stats.mean.to(dtype),
        directions=(picked @ stats.basis).to(dtype),
        total_variance=stats.total.to(dtype),
        params={"criterion": criterion, "span": span, "rank": rank, "n_texts": n_texts},
    )


def reconstruct(head_outputs: torch.Tensor, result: TextSpanResult, n_terms: int | None = None) -> torch.Tensor:
    """Head outputs replaced by mean + their projection on the first directions.

    head_outputs: [head, image, d_out], any images (e.g. an evaluation set
        disjoint from the one `result` was fitted on).
    n_terms: how many selected directions to keep (default all).
    Returns [head, image, d_out]. On the fit images with all terms this is the
    paper code's reconstruction.
    """
    n_head, n_texts, d_out = result.directions.shape
    if head_outputs.ndim != 3 or head_outputs.shape[0] != n_head or head_outputs.shape[2] != d_out:
        raise ConfigError(
            f"head_outputs must have shape [head={n_head}, image, d_out={d_out}] to match the TextSpan result, "
            f"got {tuple(head_outputs.shape)}"
        )
    n_terms = n_texts if n_terms is None else n_terms
    if not 0 <= n_terms <= n_texts:
        raise ConfigError(f"n_terms must be between 0 and {n_texts} (the texts selected per head), got {n_terms}")
    directions = result.directions[:, :n_terms].to(head_outputs.dtype)
    mean = result.mean.to(head_outputs.dtype)[:, None, :]
    # Directions are mutually orthogonal, so the projection is a sum of rank-1 terms.
    coefficients = (head_outputs - mean) @ directions.mT / directions.square().sum(-1)[:, None, :]
    return torch.baddbmm(mean, coefficients, directions)


def head_texts(result: TextSpanResult, texts: list[str], head: int) -> list[tuple[str, float]]:
    """The texts selected for `head`, in order, with their variance explained."""
    n_head = result.text_indices.shape[0]
    check_index("head", head, n_head)
    needed = int(result.text_indices.max()) + 1 if result.text_indices.numel() else 0
    if len(texts) < needed:
        raise TextError(f"texts has {len(texts)} entries but the result selects text index {needed - 1}; pass the same pool")
    indices = result.text_indices[head].tolist()
    fractions = result.variance_explained[head].tolist()
    return [(texts[i], fraction) for i, fraction in zip(indices, fractions)]


def text_span_reference(
    head_outputs: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    n_texts: int = 20,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    span_bases: torch.Tensor | None = None,
) -> tuple[TextSpanResult, torch.Tensor]:
    """Slow, literal per-head port of the paper code, kept to test `text_span`.

    Same arguments as `text_span`. Returns (result, reconstruction) where
    reconstruction [head, image, d_out] is the paper code's Ĉ.
    """
    rank = _validate(head_outputs, text_embeddings, n_texts, rank, criterion, span, span_bases, None)
    texts = text_embeddings.detach().cpu().float().numpy()
    min_norm = MIN_TEXT_NORM * float(np.linalg.norm(texts, axis=1).max())
    per_head = []
    for head in range(head_outputs.shape[0]):
        data = head_outputs[head].detach().cpu().float().numpy()
        if span == "data":
            vh = np.linalg.svd(data, full_matrices=False)[2][:rank]
        else:
            vh = span_bases[head].detach().cpu().float().numpy()
        per_head.append(_reference_head(data, texts, vh, n_texts, criterion, min_norm))
    fields = [torch.stack([torch.as_tensor(h[i]) for h in per_head]) for i in range(6)]
    indices, explained, mean, directions, total, reconstruction = fields
    result = TextSpanResult(
        indices, explained, explained.cumsum(1), mean, directions, total,
        {"criterion": criterion, "span": span, "rank": rank, "n_texts": n_texts},
    )
    return result, reconstruction


def _reference_head(data, text_features, vh, iters, criterion, min_norm):
    """One head, line by line as `replace_with_iterative_removal` (plus criterion and norm guard)."""
    text_features = vh.T.dot(np.linalg.inv(vh.dot(vh.T)).dot(vh)).dot(text_features.T).T
    data = torch.from_numpy(data).float()
    mean_data = data.mean(dim=0, keepdim=True)
    data = data - mean_data
    total = float((data**2).sum())
    reconstruction = mean_data.repeat(data.shape[0], 1)
    text_features = torch.from_numpy(text_features).float()
    indices, explained, directions = [], [], []
    for _ in range(iters):
        projection = data @ text_features.T
        norms = text_features.norm(dim=1)
        score = projection.std(dim=0) if criterion == "std" else projection.square().sum(0) / norms.square()
        score[norms < min_norm] = -math.inf
        top_n = int(torch.argmax(score))
        text_norm = text_features[top_n] @ text_features[top_n]
        kappa = data @ text_features[top_n] / text_norm
        component = kappa[:, None] * text_features[top_n][None, :]
        indices.append(top_n)
        explained.append(float((component**2).sum()) / total)
        directions.append(text_features[top_n].clone())
        reconstruction += component
        data = data - component
        text_features = text_features - (text_features @ text_features[top_n] / text_norm)[:, None] * text_features[top_n][None, :]
    return indices, explained, mean_data[0], torch.stack(directions), total, reconstruction


class _HeadStatistics(NamedTuple):
    """What the greedy loop needs from each head's outputs (all float64).

    mean [head, d_out]; total [head] (sum of squared centred outputs);
    basis [head, rank, d_out] orthonormal span; span_gram [head, rank, rank]
    centred Gram matrix in span coordinates; captured [head, text] ||C u||^2
    and sq_norm [head, text] ||u||^2 of every text u projected on the span.
    """

    mean: torch.Tensor
    total: torch.Tensor
    basis: torch.Tensor
    span_gram: torch.Tensor
    captured: torch.Tensor
    sq_norm: torch.Tensor


def _head_statistics(outputs, texts, span_bases, rank) -> _HeadStatistics:
    """Statistics of a chunk of heads; outputs [head, image, d_out], texts [text, d_out] float64."""
    centred = outputs.to(torch.float64)
    mean = centred.mean(dim=1)
    centred = centred.sub_(mean[:, None, :]) if centred is not outputs else centred - mean[:, None, :]
    gram = centred.mT @ centred
    del centred
    if span_bases is None:
        basis = _top_right_singular_vectors(gram, mean, outputs.shape[1], rank)
    else:
        basis = _orthonormal_rows(span_bases.to(outputs.device, torch.float64))
    span_gram = basis @ gram @ basis.mT
    coords = texts @ basis.mT  # [head, text, rank], only while this chunk is processed
    captured = ((coords @ span_gram) * coords).sum(-1)
    total = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return _HeadStatistics(mean, total, basis, span_gram, captured, coords.square().sum(-1))


def _top_right_singular_vectors(centred_gram, mean, n_image, rank):
    """[head, rank, d_out] top right singular vectors of the uncentred outputs, via the Gram matrix."""
    uncentred_gram = centred_gram + n_image * mean[:, :, None] * mean[:, None, :]
    _, eigenvectors = torch.linalg.eigh(uncentred_gram)
    return eigenvectors[..., -rank:].mT


def _orthonormal_rows(bases):
    """[head, rank, d_out] orthonormal rows spanning the same space as `bases`."""
    _, singular_values, vh = torch.linalg.svd(bases, full_matrices=False)
    conditioning = singular_values[:, -1] / singular_values[:, 0]
    if not bool((conditioning > 1e-6).all()):
        raise ConfigError("span_bases are rank-deficient for some head; pass linearly independent rows (or a lower rank)")
    return vh


def _greedy_select(texts, stats: _HeadStatistics, n_texts, criterion, min_norm):
    """The greedy loop, all heads at once, in span coordinates.

    texts: [text, d_out] float64, shared by all heads: the deflated dictionary
    is never materialised; the dot products each step needs come from one
    matmul with the undeflated texts (deflation only removes directions
    orthogonal to the current pick).
    Returns indices [head, n_texts], captured variance per pick [head, n_texts]
    (a sum over images, not a fraction) and the picked deflated texts
    [head, n_texts, rank].
    """
    n_head, rank, _ = stats.basis.shape
    heads = torch.arange(n_head, device=texts.device)
    captured, sq_norm, span_gram = stats.captured, stats.sq_norm, stats.span_gram
    units = texts.new_zeros(n_head, n_texts, rank)
    indices, captured_by_pick, picked = [], [], []
    for step in range(n_texts):
        score = captured if criterion == "std" else captured / sq_norm.clamp_min(min_norm**2)
        pick = score.masked_fill(sq_norm < min_norm**2, -math.inf).argmax(dim=1)
        chosen = _deflated_texts(texts[pick], stats.basis, units)
        chosen_sq_norm = chosen.square().sum(-1).clamp_min(min_norm**2)
        indices.append(pick)
        picked.append(chosen)
        captured_by_pick.append(_quadratic_form(span_gram, chosen) / chosen_sq_norm)
        units[:, step] = chosen / chosen_sq_norm.sqrt()[:, None]
        captured, sq_norm, span_gram = _deflate(texts, stats.basis, captured, sq_norm, span_gram, units[:, step])
    return torch.stack(indices, 1), torch.stack(captured_by_pick, 1), torch.stack(picked, 1)


def _deflated_texts(rows, basis, units):
    """rows [head, d_out] in span coordinates [head, rank], minus their parts along the picked units."""
    coords = (basis @ rows[:, :, None])[..., 0]
    return coords - ((units @ coords[:, :, None]) * units).sum(1)


def _quadratic_form(matrix, vector):
    """vector^T matrix vector per head: [head, rank, rank], [head, rank] -> [head]."""
    return (vector[:, None, :] @ matrix @ vector[:, :, None])[:, 0, 0]


def _deflate(texts, basis, captured, sq_norm, span_gram, unit):
    """Remove the unit direction [head, rank] from the outputs and from every text.

    With P = I - unit unit^T: every text a -> P a and the Gram matrix
    G -> P G P, so ||a||^2 drops by s^2 and a^T G a by 2 s t - s^2 g, with
    s = <a, unit>, t = <a, G unit>, g = unit^T G unit.
    """
    gram_unit = (span_gram @ unit[:, :, None])[..., 0]
    unit_gram_unit = (unit * gram_unit).sum(-1, keepdim=True)
    lifted = torch.stack([unit, gram_unit], 1) @ basis  # [head, 2, d_out]
    along, cross = (texts @ lifted.reshape(-1, basis.shape[-1]).T).T.reshape(-1, 2, texts.shape[0]).unbind(1)
    captured = captured - 2 * along * cross + along.square() * unit_gram_unit
    sq_norm = sq_norm - along.square()
    outer = gram_unit[:, :, None] * unit[:, None, :]
    span_gram = span_gram - outer - outer.mT + unit_gram_unit[:, :, None] * unit[:, :, None] * unit[:, None, :]
    return captured, sq_norm, span_gram


def _check_no_degenerate_pick(picked, min_norm):
    """Raise if some head ran out of texts (every remaining text deflated to ~0); picked [head, n_texts, rank]."""
    norms = picked.norm(dim=-1)
    if bool((norms < min_norm).any()):
        raise ConfigError(
            "the text pool spans fewer directions than n_texts within some head's span "
            "(every remaining text is a combination of the ones already picked); lower n_texts or use more texts"
        )


def _default_chunk_heads(n_image, n_text, d_out, rank):
    """Heads per chunk so the float64 workspace stays under WORKSPACE_BYTES."""
    per_head = 8 * (n_image * d_out + 3 * d_out * d_out + 3 * n_text * rank)
    return max(1, WORKSPACE_BYTES // per_head)


def _validate(head_outputs, text_embeddings, n_texts, rank, criterion, span, span_bases, chunk_heads) -> int:
    """Check every argument; return the effective rank."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if span not in SPANS:
        raise ConfigError(f"unknown span {span!r}; choose one of {', '.join(SPANS)}")
    _check_tensor("head_outputs", head_outputs, "[head, image, d_out]", 3)
    _check_tensor("text_embeddings", text_embeddings, "[text, d_out]", 2)
    n_head, n_image, d_out = head_outputs.shape
    n_text = text_embeddings.shape[0]
    if text_embeddings.shape[1] != d_out:
        raise TextError(
            f"text_embeddings have dimension {text_embeddings.shape[1]} but head outputs have d_out {d_out}; "
            "embed the texts with the same model"
        )
    if n_head < 1 or n_text < 1:
        raise ConfigError(f"need at least one head and one text, got {n_head} heads and {n_text} texts")
    if n_image < 2:
        raise ConfigError(f"need at least 2 images to measure variance, got {n_image}")
    rank = _check_span(span, span_bases, rank, head_outputs.shape)
    _check_positive_int("n_texts", n_texts)
    if n_texts > n_text:
        raise ConfigError(f"n_texts ({n_texts}) exceeds the number of texts in the pool ({n_text}); lower n_texts")
    if n_texts > rank:
        raise ConfigError(
            f"n_texts ({n_texts}) exceeds the rank ({rank}): the span holds only {rank} independent directions; lower n_texts"
        )
    if chunk_heads is not None:
        _check_positive_int("chunk_heads", chunk_heads)
    return rank


def _check_span(span, span_bases, rank, outputs_shape) -> int:
    """Validate span/span_bases/rank against [head, image, d_out]; return the rank."""
    n_head, n_image, d_out = outputs_shape
    if span == "data":
        if span_bases is not None:
            raise ConfigError("span_bases is only used with span='weights'; drop it or set span='weights'")
        rank = DEFAULT_RANK if rank is None else rank
        _check_positive_int("rank", rank)
        if rank > d_out:
            raise ConfigError(f"rank ({rank}) exceeds d_out ({d_out}); use rank <= {d_out}")
        if n_image < rank:
            raise ConfigError(
                f"fewer images ({n_image}) than the rank ({rank}): the data span needs at least {rank} images; "
                "use more images or a lower rank"
            )
        return rank
    if span_bases is None:
        raise ConfigError("span='weights' needs span_bases [head, rank, d_out]")
    _check_tensor("span_bases", span_bases, "[head, rank, d_out]", 3)
    if span_bases.shape[0] != n_head or span_bases.shape[2] != d_out:
        raise ConfigError(f"span_bases must have shape [head={n_head}, rank, d_out={d_out}], got {tuple(span_bases.shape)}")
    if rank is not None and rank != span_bases.shape[1]:
        raise ConfigError(f"rank ({rank}) disagrees with span_bases, which has rank {span_bases.shape[1]}; omit rank")
    if span_bases.shape[1] > d_out or span_bases.shape[1] < 1:
        raise ConfigError(f"span_bases rank ({span_bases.shape[1]}) must be between 1 and d_out ({d_out})")
    return span_bases.shape[1]


def _check_tensor(name, value, shape, ndim):
    """A floating tensor with `ndim` dims and only finite values."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor {shape}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ConfigError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    # Checked in slices so a large input is not duplicated as one bool mask.
    rows_per_slice = max(1, 2**24 // max(1, value[0].numel())) if len(value) else 1
    if not all(bool(torch.isfinite(part).all()) for part in value.split(rows_per_slice)):
        raise ConfigError(f"{name} contains NaN or infinite values; clean the input")


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
