"""TextSpan's sufficient statistics per head, accumulated over image batches, and TextSpan from them.

TextSpan needs of each head's outputs C [image, d_out] only three numbers' worth: the count n, the
sum s = C^T 1 and the uncentred Gram matrix S = C^T C (float64). They add across batches, shards and
ranks; TextSpan then runs once on the merged totals:
    mean = s / n,   centred Gram G = S - n mean mean^T,   data span = top eigenvectors of S.
Memory: 8 * d_out^2 bytes per head (2 MB at d_out 512), never [image, d_out].

`text_span_from_stats` is the one place that turns statistics into a TextSpanResult; it follows
`core.heads.textspan.text_span` step for step (same greedy loop, same helpers) from the statistics
instead of the outputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from core.errors import ConfigError
from core.heads import textspan as ts


class HeadStatistics(NamedTuple):
    """count [] int; sum [head, d_out] float64; gram [head, d_out, d_out] float64 (uncentred).

    The same fields as core.heads.textspan.HeadStatistics of the coming "TextSpan from sufficient
    statistics" change, so switching to it is an import.
    """

    count: int
    sum: torch.Tensor
    gram: torch.Tensor


def accumulate(sums: torch.Tensor, grams: torch.Tensor, outputs: torch.Tensor) -> None:
    """Add a batch of head outputs [head, batch, d_out] (any float dtype) into float64 sums and grams."""
    x = outputs.to(torch.float64)  # a float32 product is exact in float64; only the sums round
    sums += x.sum(1)
    grams += x.mT @ x


def text_span_from_stats(stats: HeadStatistics, text_embeddings: torch.Tensor, *, n_texts: int, rank: int,
                         criterion: str = "std", chunk_heads: int | None = None) -> ts.TextSpanResult:
    """TextSpan (data span) for every head from its statistics; floats of the result are float32."""
    count, sums, grams = stats
    n_head, d_out = sums.shape
    if criterion not in ts.CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(ts.CRITERIA)}")
    if not 1 <= n_texts <= min(rank, len(text_embeddings)) or not 1 <= rank <= min(d_out, count):
        raise ConfigError(f"TextSpan needs 1 <= n_texts ({n_texts}) <= rank ({rank}) <= min(d_out {d_out}, "
                          f"images {count}) and n_texts <= texts ({len(text_embeddings)})")
    texts = text_embeddings.to(sums.device, torch.float64)
    min_norm = ts.MIN_TEXT_NORM * float(texts.norm(dim=1).max())
    chunk = chunk_heads or ts._default_chunk_heads(0, len(texts), d_out, rank)
    parts = [_statistics(count, sums[i:i + chunk], grams[i:i + chunk], texts, rank) for i in range(0, n_head, chunk)]
    merged = ts._HeadStatistics(*(torch.cat(field) for field in zip(*parts)))
    indices, captured_by_pick, picked = ts._greedy_select(texts, merged, n_texts, criterion, min_norm)
    ts._check_no_degenerate_pick(picked, min_norm)
    explained = captured_by_pick / merged.total.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    return ts.TextSpanResult(
        text_indices=indices, variance_explained=explained.float(), cumulative_variance=explained.cumsum(1).float(),
        mean=merged.mean.float(), directions=(picked @ merged.basis).float(), total_variance=merged.total.float(),
        params={"criterion": criterion, "span": "data", "rank": rank, "n_texts": n_texts,
                "ranks": [rank] * n_head})


def _statistics(count: int, sums: torch.Tensor, grams: torch.Tensor, texts: torch.Tensor, rank: int):
    mean = sums / count
    centred = grams - count * mean[:, :, None] * mean[:, None, :]
    _, eigenvectors = torch.linalg.eigh(grams)  # the data span: top right singular vectors of the outputs
    basis = eigenvectors[..., -rank:].mT
    span_gram = basis @ centred @ basis.mT
    coords = texts @ basis.mT
    captured = ((coords @ span_gram) * coords).sum(-1)
    total = centred.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0.0)
    if not math.isfinite(float(total.sum())):
        raise ConfigError("head outputs hold NaN or infinite values; the model or images are broken")
    return ts._HeadStatistics(mean, total, basis, span_gram, captured, coords.square().sum(-1))
