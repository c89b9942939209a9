"""TextSpan: label each attention head with the texts that explain its outputs.

Greedy algorithm of Gandelsman et al. (ICLR 2024), as in the paper code
(`compute_complete_text_set.py`, `replace_with_iterative_removal`): restrict
the text pool to a `rank`-dimensional span of the head, centre the head's
outputs over the images, then `n_texts` times pick the text whose direction
captures the most of the remaining variation, deflate the outputs and
Gram-Schmidt-deflate every text against it.

Sufficient statistics. Everything the loop needs is a quadratic form in the
head outputs, so TextSpan runs from three per-head statistics over the images
(`HeadStatistics`): the count n, the sum s [d_out] and the uncentred Gram
matrix G = sum_k c_k c_k^T [d_out, d_out], in float64. The data span is
the top eigenvectors of G (the right singular vectors of the uncentred
outputs, as the paper code); the centred Gram matrix is C = G - s s^T / n;
the std over images of <c, u> is sqrt(u^T C u / (n - 1)) and the variance
explained by u is u^T C u / ||u||^2. Statistics of disjoint image sets add
(`HeadStatistics.merge`), so they can be computed in shards or on several
processes and reduced before `text_span_from_stats`. `text_span` computes
them from a [head, image, d_out] tensor, a chunk of heads at a time.

How the loop computes (same numbers as the literal loop, far cheaper):
* the span is the top `rank` eigenvectors of G, computed without the others
  (tridiagonal reduction, all eigenvalues, inverse iteration for the top ones:
  `_top_eigh`); since B G B^T is then diagonal, C in span coordinates is that
  diagonal minus a rank-1 term, with no d_out x d_out products;
* it works in span coordinates (orthonormal basis B [rank, d_out]): C becomes
  B C B^T [rank, rank], and each deflation is a rank-1 update of it and of
  two numbers per text (||u||^2 and u^T C u);
* the deflated dictionary is never materialised: the dot products a step
  needs are those of the undeflated texts with the current pick (deflation
  only removes directions orthogonal to it), one [text, d_out] x
  [d_out, 2 * head] matmul for all heads per step.

Reproducibility: deliberate differences from the paper code.
* Numerical rank. The paper code projects the texts on the top 80 right
  singular vectors, but a head's outputs have far lower numerical rank (the
  toy model: 27 = head width 24 + 3 offsets; ViT-B-16: at most 64 + 3). The
  remaining "span" directions are float32 rounding noise: which texts they
  favour changes with the image order, the thread count and the machine, and
  every pick after the first deflates along them. Here the span rank of each
  head is capped at its numerical rank: the number of singular values of
  the uncentred outputs above RANK_RTOL times the largest (measured on the
  toy model and random-weight ViT-B-16: rounding noise sits at 2-3e-8 of the
  largest singular value, the smallest genuine direction above 1e-5). The
  rank actually used is reported per head (`params["ranks"]`).
* Ties. Scores within TIE_RTOL of the best (relative), or within the noise
  floor (RANK_RTOL * largest singular value)^2 of it, tie, and the lowest
  pool index wins, so float noise never decides a pick (duplicate texts,
  and steps where every remaining score is noise, pick by index).
Other departures, inert on well-posed input: the span is computed in float64
from the Gram matrix (eigh) rather than a float32 SVD, and a text whose
deflated norm fell below `MIN_TEXT_NORM` (relative to the largest text
embedding) is never picked, so duplicates of a chosen text cannot be picked
for their rounding noise under the normalised criterion.

Memory: `text_span` reads the head outputs, never copies them whole. The
statistics and span are computed `chunk_heads` heads at a time in a float64
workspace of about 8 * (image*d_out + 4*d_out^2 + 3*text*rank) bytes per
head (25 MB for 2,000 images, 3,498 texts, d_out 512, rank 80; the default
chunk keeps it under `WORKSPACE_BYTES`). The loop then holds, for all heads
together, the float64 texts once plus 8 * (rank*d_out + rank^2 + 2*text)
bytes per head (0.4 MB at that size).
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from core.errors import ConfigError, TextError, check_index

CRITERIA = ("std", "explained_variance")
SPANS = ("data", "weights")
DEFAULT_RANK = 80
MIN_TEXT_NORM = 1e-4
# A singular value of the uncentred head outputs counts towards the numerical rank when it exceeds
# RANK_RTOL times the largest (about 8 float32 epsilons; rounding noise measured at 2-3e-8).
RANK_RTOL = 1e-6
# Scores within this fraction of the best one tie (the lowest pool index wins).
TIE_RTOL = 1e-6
WORKSPACE_BYTES = 128 * 2**20
_THREADS = threading.RLock()


@dataclass(frozen=True)
class HeadStatistics:
    """Sufficient statistics of head outputs over an image set, all TextSpan needs.

    count: images; sum: [head, d_out] float64 sum over images of each head's
    output c; gram: [head, d_out, d_out] float64 sum over images of c c^T
    (uncentred). Statistics of disjoint image sets `merge` by adding them:
    the result equals the statistics of the union up to float64 rounding,
    bit for bit when partials are always added in the same order.
    """

    count: int
    sum: torch.Tensor
    gram: torch.Tensor

    @classmethod
    def from_outputs(cls, head_outputs: torch.Tensor) -> "HeadStatistics":
        """Statistics of head_outputs [head, image, d_out] (any float dtype; accumulated in float64)."""
        with _one_thread():  # memory-bound passes: a second thread only adds spin-waiting (3x the CPU time)
            outputs = head_outputs.detach().to(torch.float64)
            total = outputs.sum(1)
        return cls(int(outputs.shape[1]), total, outputs.mT @ outputs)  # one large matmul: all threads

    @classmethod
    def zeros(cls, n_head: int, d_out: int, device: torch.device | str | None = None) -> "HeadStatistics":
        """The statistics of no images (the identity of `merge`)."""
        return cls(0, torch.zeros(n_head, d_out, dtype=torch.float64, device=device),
                   torch.zeros(n_head, d_out, d_out, dtype=torch.float64, device=device))

    def merge(self, other: "HeadStatistics") -> "HeadStatistics":
        """The statistics of both image sets together (they must cover the same heads)."""
        if self.sum.shape != other.sum.shape or self.gram.shape != other.gram.shape:
            raise ConfigError(f"cannot merge head statistics of shapes {tuple(self.gram.shape)} and "
                              f"{tuple(other.gram.shape)}: they must cover the same heads")
        return HeadStatistics(self.count + other.count, self.sum + other.sum, self.gram + other.gram)

    @property
    def mean(self) -> torch.Tensor:
        """[head, d_out] mean head output."""
        return self.sum / self.count

    def centred_gram(self) -> torch.Tensor:
        """[head, d_out, d_out] sum over images of (c - mean)(c - mean)^T."""
        return self.gram - self.sum[:, :, None] * self.mean[:, None, :]

    def select(self, rows: Sequence[int] | slice) -> "HeadStatistics":
        """The statistics of some heads (rows in this object's order)."""
        rows = rows if isinstance(rows, slice) else list(rows)
        return HeadStatistics(self.count, self.sum[rows], self.gram[rows])

    def tensors(self) -> dict[str, torch.Tensor]:
        """count [1] (int64), sum, gram: e.g. to save, or to all-reduce across processes."""
        return {"count": torch.tensor([self.count]), "sum": self.sum, "gram": self.gram}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "HeadStatistics":
        return cls(int(tensors["count"].reshape(-1)[0]), tensors["sum"].to(torch.float64),
                   tensors["gram"].to(torch.float64))


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
    params: dict with criterion, span, rank (the requested rank: an upper
        bound for span "data"), n_texts, ranks (the rank each head's span
        actually had: its numerical rank when lower) and rank_rtol.
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
        span "data", where each head's span is further capped at the numerical
        rank of its outputs (see the module docstring); for span "weights" it
        is span_bases' rank (an explicit value must agree).
    criterion: "std" (paper code: std over images of the unnormalised dot
        product with the deflated text) or "explained_variance" (paper's
        stated objective: variance explained by the normalised direction).
    span: "data" (top right singular vectors of the uncentred head outputs,
        as the paper code) or "weights" (rows of `span_bases`).
    span_bases: [head, rank, d_out], any basis (not necessarily orthonormal)
        of each head's span, e.g. from W_OV; only with span "weights".
    chunk_heads: heads whose statistics are computed together (the memory
        bound); default sized to WORKSPACE_BYTES. The greedy loop itself runs
        on all heads at once.
    Returns a TextSpanResult; floats in head_outputs' dtype. Raises
    ConfigError (TextError for a text pool of the wrong dimension) on bad input.
    The result equals text_span_from_stats(HeadStatistics.from_outputs(head_outputs), ...).
    """
    # Finite values are checked on the statistics: any NaN or infinity in the outputs makes a diagonal entry of
    # the Gram matrix non-finite, and the float64 sums cannot overflow from float32 data (a pass saved).
    _check_tensor("head_outputs", head_outputs, "[head, image, d_out]", 3, finite=False)
    n_head, n_image, d_out = head_outputs.shape
    rank = _validate(head_outputs.shape, text_embeddings, n_texts, rank, criterion, span, span_bases, chunk_heads)
    chunk = chunk_heads or _default_chunk_heads(n_image, len(text_embeddings), d_out, rank)
    texts = text_embeddings.to(head_outputs.device, torch.float64)
    spans = []
    for start in range(0, n_head, chunk):
        heads = slice(start, start + chunk)
        stats = HeadStatistics.from_outputs(head_outputs[heads])
        if not bool(torch.isfinite(stats.gram.diagonal(dim1=-2, dim2=-1)).all()):
            raise ConfigError("head_outputs contains NaN or infinite values; clean the input")
        with _one_thread():
            spans.append(_span_of(stats, texts, None if span_bases is None else span_bases[heads], rank))
    return _fit(spans, texts, n_texts, rank, criterion, span, head_outputs.dtype)


def text_span_from_stats(
    stats: HeadStatistics,
    text_embeddings: torch.Tensor,
    *,
    n_texts: int = 20,
    rank: int | None = None,
    criterion: str = "std",
    span: str = "data",
    span_bases: torch.Tensor | None = None,
    chunk_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> TextSpanResult:
    """TextSpan from the heads' sufficient statistics (e.g. merged over shards or processes).

    Same arguments and result as `text_span` (which computes the statistics
    from the outputs and then does exactly this), with stats in place of the
    outputs; `dtype` is the dtype of the returned floats.
    """
    n_head, d_out = _check_statistics(stats)
    rank = _validate((n_head, stats.count, d_out), text_embeddings, n_texts, rank, criterion, span, span_bases,
                     chunk_heads)
    chunk = chunk_heads or _default_chunk_heads(0, len(text_embeddings), d_out, rank)
    texts = text_embeddings.to(stats.gram.device, torch.float64)
    spans = []
    with _one_thread():
        for start in range(0, n_head, chunk):
            heads = slice(start, start + chunk)
            bases = None if span_bases is None else span_bases[heads]
            spans.append(_span_of(stats.select(heads), texts, bases, rank))
    return _fit(spans, texts, n_texts, rank, criterion, span, dtype)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the eigendecompositions and the greedy loop's many small operations on one thread.

    With several OpenMP threads each small operation ends in a barrier where the threads spin-wait
    (libgomp's default wait policy); when another process holds a core, a thread is descheduled
    inside that barrier and its partner spins through whole time slices. Measured (bench.textspan
    --contention): the 48-head call took 8x its quiet CPU time; the batched 512 x 512 eigh
    (LAPACK syevd) alone took 7x. On one thread these steps cost about what they cost on two
    (they are latency-bound), so only the Gram matrices (one large matmul per chunk) use all threads.
    torch.set_num_threads is per thread (OpenMP/MKL) but also updates a process default, hence the lock.
    """
    with _THREADS:
        before = torch.get_num_threads()
        if before == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _fit(spans, texts, n_texts, rank, criterion, span, dtype) -> TextSpanResult:
    """The greedy loop over the heads' spans (all heads at once), packed as a TextSpanResult."""
    state = _Span(*(torch.cat(field) for field in zip(*spans)))
    _check_ranks(state.ranks, n_texts, span)
    min_norm = MIN_TEXT_NORM * float(texts.norm(dim=1).max())
    with _one_thread():
        indices, captured_by_pick, picked = _greedy_select(texts, state, n_texts, criterion, min_norm)
    _check_no_degenerate_pick(picked, min_norm)
    explained = captured_by_pick / state.total.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    return TextSpanResult(
        text_indices=indices,
        variance_explained=explained.to(dtype),
        cumulative_variance=explained.cumsum(1).to(dtype),
        mean=state.mean.to(dtype),
        directions=(picked @ state.basis).to(dtype),
        total_variance=state.total.to(dtype),
        params={"criterion": criterion, "span": span, "rank": rank, "n_texts": n_texts,
                "ranks": state.ranks.tolist(), "rank_rtol": RANK_RTOL},
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
    rank: int | Sequence[int] | None = None,
    criterion: str = "std",
    span: str = "data",
    span_bases: torch.Tensor | None = None,
) -> tuple[TextSpanResult, torch.Tensor]:
    """Slow, literal per-head port of the paper code, kept to test `text_span`.

    Same arguments as `text_span`, except that the data span's rank is taken
    literally (never capped at the numerical rank) and may be one per head,
    e.g. a text_span result's params["ranks"]. Picks follow the same tie rule.
    Returns (result, reconstruction) where reconstruction [head, image, d_out]
    is the paper code's Ĉ.
    """
    ranks = None if rank is None or isinstance(rank, int) else [int(r) for r in rank]
    if ranks is not None and len(ranks) != head_outputs.shape[0]:
        raise ConfigError(f"give one rank per head ({head_outputs.shape[0]}), got {len(ranks)}")
    _check_tensor("head_outputs", head_outputs, "[head, image, d_out]", 3)
    rank = _validate(head_outputs.shape, text_embeddings, n_texts, max(ranks) if ranks else rank, criterion, span,
                     span_bases, None)
    texts = text_embeddings.detach().cpu().float().numpy()
    min_norm = MIN_TEXT_NORM * float(np.linalg.norm(texts, axis=1).max())
    per_head = []
    for head in range(head_outputs.shape[0]):
        data = head_outputs[head].detach().cpu().float().numpy()
        if span == "data":
            singular, vh = np.linalg.svd(data, full_matrices=False)[1:]
            vh = vh[: ranks[head] if ranks else rank]
        else:
            singular, vh = np.linalg.norm(data, 2)[None], span_bases[head].detach().cpu().float().numpy()
        floor = float(RANK_RTOL * singular[0]) ** 2
        per_head.append(_reference_head(data, texts, vh, n_texts, criterion, min_norm, floor))
    fields = [torch.stack([torch.as_tensor(h[i]) for h in per_head]) for i in range(6)]
    indices, explained, mean, directions, total, reconstruction = fields
    result = TextSpanResult(
        indices, explained, explained.cumsum(1), mean, directions, total,
        {"criterion": criterion, "span": span, "rank": rank, "n_texts": n_texts,
         "ranks": ranks or [rank] * len(per_head), "rank_rtol": RANK_RTOL},
    )
    return result, reconstruction


def _reference_head(data, text_features, vh, iters, criterion, min_norm, floor):
    """One head, line by line as `replace_with_iterative_removal` (plus criterion, norm guard and tie rule)."""
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
        if criterion == "std":  # the tie rule compares variances: std^2 (n - 1)
            score = projection.std(dim=0).double().square() * (data.shape[0] - 1)
        else:
            score = projection.square().sum(0).double() / norms.double().square()
        top_n = int(_first_best(score[None], (norms >= min_norm)[None], torch.tensor([floor]))[0])
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


def _first_best(score: torch.Tensor, valid: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """[head] lowest index whose score ties with the best valid one; score, valid [head, text], floor [head].

    A score ties when it is within TIE_RTOL of the best (relative) or within the noise floor of it.
    """
    score = score.masked_fill(~valid, -math.inf)
    best = score.amax(dim=1, keepdim=True)
    margin = TIE_RTOL * best.abs() + floor.to(score.dtype)[:, None]
    tied = score >= torch.where(torch.isfinite(best), best - margin, best)
    positions = torch.arange(score.shape[1], device=score.device)
    return torch.where(tied, positions, score.shape[1]).amin(dim=1).clamp_max(score.shape[1] - 1)


class _Span(NamedTuple):
    """What the greedy loop needs from each head's statistics (all float64).

    mean [head, d_out]; total [head] (sum of squared centred outputs);
    basis [head, rank, d_out] orthonormal span, rows beyond the head's own
    rank zero; span_gram [head, rank, rank] centred Gram matrix in span
    coordinates; captured [head, text] u^T C u and sq_norm [head, text]
    ||u||^2 of every text u projected on the span; ranks [head] (long) the
    span rank of each head; floor [head] the noise floor of a variance,
    (RANK_RTOL * largest singular value)^2.
    """

    mean: torch.Tensor
    total: torch.Tensor
    basis: torch.Tensor
    span_gram: torch.Tensor
    captured: torch.Tensor
    sq_norm: torch.Tensor
    ranks: torch.Tensor
    floor: torch.Tensor


def _span_of(stats: HeadStatistics, texts, span_bases, rank) -> _Span:
    """Span, statistics in span coordinates and initial scores of a chunk of heads; texts [text, d_out] float64."""
    mean = stats.mean
    total = stats.gram.diagonal(dim1=-2, dim2=-1).sum(-1) - (stats.sum * mean).sum(-1)  # trace of the centred Gram
    if span_bases is None:
        basis, ranks, largest, eigenvalues = _numerical_span(stats.gram, rank)
        # The basis rows are eigenvectors of the uncentred Gram G, so B G B^T = diag(eigenvalues) and the centred
        # Gram in span coordinates is that diagonal minus a rank-1 term (B s)(B s)^T / n: no d_out^2 products.
        projected_sum = (basis @ stats.sum[:, :, None])[..., 0]  # [head, rank]
        span_gram = torch.diag_embed(eigenvalues) - projected_sum[:, :, None] * projected_sum[:, None, :] / stats.count
    else:
        basis = _orthonormal_rows(span_bases.to(stats.gram.device, torch.float64))
        ranks = torch.full((len(basis),), basis.shape[1], dtype=torch.long, device=basis.device)
        largest = torch.linalg.eigvalsh(stats.gram)[:, -1]
        span_gram = basis @ stats.centred_gram() @ basis.mT
    # Every head's text coordinates in one matrix product [text, head * rank], only while this chunk is processed.
    n_head, rank, d_out = basis.shape
    coords = (texts @ basis.reshape(-1, d_out).T).view(len(texts), n_head, rank).transpose(0, 1)
    captured = ((coords @ span_gram) * coords).sum(-1)
    return _Span(mean, total, basis, span_gram, captured, coords.square().sum(-1), ranks,
                 RANK_RTOL**2 * largest.clamp_min(0))


def _numerical_span(uncentred_gram, rank):
    """Top right singular vectors of the uncentred outputs, capped at their numerical rank.

    Returns basis [head, rank, d_out] (rows beyond a head's numerical rank are zero), ranks [head],
    the largest eigenvalue of the Gram matrix (largest singular value squared) [head] and the
    eigenvalues of the basis rows [head, rank] (zero beyond the numerical rank).
    A singular value s counts when s > RANK_RTOL * s_max, i.e. eigenvalue > RANK_RTOL^2 * its largest.
    """
    eigenvalues, eigenvectors = _top_eigh(uncentred_gram, rank)
    largest = eigenvalues[:, -1]
    numerical = (eigenvalues > RANK_RTOL**2 * largest.clamp_min(0)[:, None]).sum(-1)
    ranks = numerical.clamp(max=rank)
    basis = eigenvectors.flip(-1).mT
    keep = torch.arange(rank, device=basis.device) < ranks[:, None]
    return basis * keep[:, :, None], ranks, largest, eigenvalues[:, -rank:].flip(-1) * keep


def _top_eigh(matrices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(all eigenvalues [head, n] ascending, eigenvectors of the k largest [head, n, k] ascending) of symmetric
    float64 matrices [head, n, n].

    On the CPU, per matrix: LAPACK's tridiagonal reduction (dsytrd), all eigenvalues of the tridiagonal matrix
    (dsterf), eigenvectors of the top k only by inverse iteration (dstein, reorthogonalised within clusters), back
    to the original basis with torch.ormqr. A full eigendecomposition (torch.linalg.eigh, also the fallback) spends
    about 30% more time computing eigenvectors nobody reads (bench.textspan: 512 x 512, k = 80)."""
    if matrices.device.type != "cpu" or matrices.dtype != torch.float64 or k >= matrices.shape[-1]:
        eigenvalues, eigenvectors = torch.linalg.eigh(matrices)
        return eigenvalues, eigenvectors[..., -k:]
    try:
        from scipy.linalg import lapack
        from threadpoolctl import threadpool_limits
    except ImportError:  # both come with scikit-learn; without them, the full decomposition
        eigenvalues, eigenvectors = torch.linalg.eigh(matrices)
        return eigenvalues, eigenvectors[..., -k:]
    # scipy's own BLAS (OpenBLAS) threads would spin-wait through every small step: one thread (see _one_thread)
    with threadpool_limits(limits=1, user_api="blas"):
        return _top_eigh_lapack(matrices, k, lapack)


def _top_eigh_lapack(matrices: torch.Tensor, k: int, lapack) -> tuple[torch.Tensor, torch.Tensor]:
    n = matrices.shape[-1]
    values, vectors = matrices.new_empty(len(matrices), n), matrices.new_empty(len(matrices), n, k)
    block, split = np.ones(n, dtype=np.int32), np.full(n, n, dtype=np.int32)  # one unreduced block
    for index, matrix in enumerate(matrices.numpy()):
        reflectors, diagonal, off_diagonal, tau, info = lapack.dsytrd(matrix, lower=1)
        if info == 0:
            eigenvalues, info = lapack.dsterf(diagonal, off_diagonal)
        if info == 0:
            tridiagonal_vectors, info = lapack.dstein(diagonal, off_diagonal, eigenvalues[n - k:], block, split)
        if info != 0:  # did not converge (never seen on Gram matrices): the full decomposition for this one
            full_values, full_vectors = torch.linalg.eigh(matrices[index])
            values[index], vectors[index] = full_values, full_vectors[:, -k:]
            continue
        values[index] = torch.from_numpy(eigenvalues)
        tridiagonal_vectors = torch.from_numpy(tridiagonal_vectors)
        if n > 1:  # Q = diag(1, Q'), Q' the product of the reflectors stored below the first subdiagonal
            tridiagonal_vectors[1:] = torch.ormqr(torch.from_numpy(reflectors)[1:, :-1], torch.from_numpy(tau),
                                                  tridiagonal_vectors[1:])
        vectors[index] = tridiagonal_vectors
    return values, vectors


def _orthonormal_rows(bases):
    """[head, rank, d_out] orthonormal rows spanning the same space as `bases`."""
    _, singular_values, vh = torch.linalg.svd(bases, full_matrices=False)
    conditioning = singular_values[:, -1] / singular_values[:, 0]
    if not bool((conditioning > 1e-6).all()):
        raise ConfigError("span_bases are rank-deficient for some head; pass linearly independent rows (or a lower rank)")
    return vh


def _greedy_select(texts, state: _Span, n_texts, criterion, min_norm):
    """The greedy loop, all heads at once, in span coordinates.

    texts: [text, d_out] float64, shared by all heads: the deflated dictionary
    is never materialised; the dot products each step needs come from one
    matmul with the undeflated texts (deflation only removes directions
    orthogonal to the current pick).
    Returns indices [head, n_texts], captured variance per pick [head, n_texts]
    (a sum over images, not a fraction) and the picked deflated texts
    [head, n_texts, rank].
    """
    n_head, rank, _ = state.basis.shape
    captured, sq_norm, span_gram = state.captured, state.sq_norm, state.span_gram
    units = texts.new_zeros(n_head, n_texts, rank)
    indices, captured_by_pick, picked = [], [], []
    for step in range(n_texts):
        score = captured if criterion == "std" else captured / sq_norm.clamp_min(min_norm**2)
        pick = _first_best(score, sq_norm >= min_norm**2, state.floor)
        chosen = _deflated_texts(texts[pick], state.basis, units)
        chosen_sq_norm = chosen.square().sum(-1).clamp_min(min_norm**2)
        indices.append(pick)
        picked.append(chosen)
        captured_by_pick.append(_quadratic_form(span_gram, chosen) / chosen_sq_norm)
        units[:, step] = chosen / chosen_sq_norm.sqrt()[:, None]
        captured, sq_norm, span_gram = _deflate(texts, state.basis, captured, sq_norm, span_gram, units[:, step])
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


def _check_ranks(ranks, n_texts, span) -> None:
    """Raise unless every head's span holds n_texts directions; ranks [head] long."""
    low = [(head, rank) for head, rank in enumerate(ranks.tolist()) if rank < n_texts]
    if low:
        head, rank = low[0]
        what = ("numerical rank of its outputs (singular values above " f"{RANK_RTOL:g} of the largest)"
                if span == "data" else "rank of its span")
        raise ConfigError(
            f"n_texts ({n_texts}) exceeds the {what} of {len(low)} head(s), e.g. row {head}: {rank}; "
            f"beyond it the picks would be rounding noise; lower n_texts to at most {min(r for _, r in low)}"
        )


def _default_chunk_heads(n_image, n_text, d_out, rank):
    """Heads per chunk so the float64 workspace stays under WORKSPACE_BYTES."""
    per_head = 8 * (n_image * d_out + 4 * d_out * d_out + 3 * n_text * rank)
    return max(1, WORKSPACE_BYTES // per_head)


def _check_statistics(stats) -> tuple[int, int]:
    """(head, d_out) of valid HeadStatistics."""
    if not isinstance(stats, HeadStatistics):
        raise ConfigError(f"stats must be HeadStatistics, got {type(stats).__name__}")
    _check_tensor("stats.sum", stats.sum, "[head, d_out]", 2)
    _check_tensor("stats.gram", stats.gram, "[head, d_out, d_out]", 3)
    n_head, d_out = stats.sum.shape
    if stats.gram.shape != (n_head, d_out, d_out):
        raise ConfigError(f"stats.gram must have shape [head={n_head}, {d_out}, {d_out}], got {tuple(stats.gram.shape)}")
    if not isinstance(stats.count, int) or isinstance(stats.count, bool) or stats.count < 0:
        raise ConfigError(f"stats.count must be a non-negative integer, got {stats.count!r}")
    return n_head, d_out


def _validate(shape, text_embeddings, n_texts, rank, criterion, span, span_bases, chunk_heads) -> int:
    """Check every argument against outputs of shape [head, image, d_out]; return the requested rank."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if span not in SPANS:
        raise ConfigError(f"unknown span {span!r}; choose one of {', '.join(SPANS)}")
    _check_tensor("text_embeddings", text_embeddings, "[text, d_out]", 2)
    n_head, n_image, d_out = shape
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
    rank = _check_span(span, span_bases, rank, shape)
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


def _check_tensor(name, value, shape, ndim, finite=True):
    """A floating tensor with `ndim` dims and (unless finite=False: the caller checks) only finite values."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor {shape}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ConfigError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if not finite:
        return
    # Checked in slices so a large input is not duplicated as one bool mask.
    rows_per_slice = max(1, 2**24 // max(1, value[0].numel())) if len(value) else 1
    if not all(bool(torch.isfinite(part).all()) for part in value.split(rows_per_slice)):
        raise ConfigError(f"{name} contains NaN or infinite values; clean the input")


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
