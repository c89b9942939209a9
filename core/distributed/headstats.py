"""TextSpan's sufficient statistics per head, accumulated batch by batch on the build's device.

The statistics themselves (count, sum, float64 Gram per head) and TextSpan from them are
core.heads.textspan's `HeadStatistics` and `text_span_from_stats` (through
core.heads.outputs.fit_text_span, which records each head's effective rank). `accumulate` adds a
batch in place, with the same arithmetic as `HeadStatistics.from_outputs` + `merge`, so a sharded
build and core.heads' own streaming give the same bits for the same batches.
"""

from __future__ import annotations

import torch

from core.heads.outputs import fit_text_span
from core.heads.textspan import HeadStatistics, TextSpanResult

__all__ = ["HeadStatistics", "accumulate", "text_span_from_stats"]


def accumulate(sums: torch.Tensor, grams: torch.Tensor, outputs: torch.Tensor) -> None:
    """Add a batch of head outputs [head, batch, d_out] (any float dtype) into float64 sums and grams."""
    x = outputs.to(torch.float64)  # a float32 product is exact in float64; only the sums round
    sums += x.sum(1)
    grams += x.mT @ x


def text_span_from_stats(stats: HeadStatistics, text_embeddings: torch.Tensor, *, n_texts: int, rank: int,
                         criterion: str = "std") -> TextSpanResult:
    """TextSpan (data span, capped at each head's numerical rank) from merged statistics; float32 results."""
    return fit_text_span(stats, text_embeddings, n_texts=n_texts, rank=rank, criterion=criterion)
