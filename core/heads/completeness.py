"""Completeness check (paper, section 4.2): do a head's first m TextSpan texts suffice to rebuild it?

Each chosen head's normalised contribution is replaced by its TextSpan reconstruction from its
first m texts (mean + projection on the first m deflated text directions), every head of the
layers before the first chosen layer is mean-ablated, and the MLPs and the embedding term are
kept. Zero-shot accuracy on a labelled image set is reported per m against the unablated model.
Like every ablation here it acts on the direct-effect decomposition with the final LayerNorm
statistics and |y| frozen. TextSpan and the means should be fitted on images disjoint from the
evaluation set (the paper code used the same set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from core.progress import Progress, track
from core.engine.contributions import direct_effects, fold_weights
from core.errors import ConfigError, DatasetError
from core.heads.outputs import Head, check_heads
from core.engine.images import LabelledImages, iter_image_batches
from core.engine.models import ClipBundle
from core.heads.textspan import TextSpanResult, reconstruct
from core.engine.trace import trace_vit


@dataclass(frozen=True)
class CompletenessReport:
    """Accuracy of the unablated model and with the chosen heads rebuilt from m texts."""

    baseline: float
    rows: list[tuple[int, float]]  # (m, accuracy)
    count: int
    ablate_earlier: bool
    first_layer: int


def completeness_representation(
    embedding_and_mlps: torch.Tensor,
    heads_all: torch.Tensor,
    result: TextSpanResult,
    heads: Sequence[Head],
    head_means: torch.Tensor,
    n_terms: int,
    *,
    ablate_earlier: bool = True,
) -> torch.Tensor:
    """[batch, d_out] representation with the chosen heads rebuilt from their first `n_terms` texts.

    embedding_and_mlps: [batch, d_out] the (normalised) embedding term plus all MLPs, kept as is.
    heads_all: [batch, layer, head, d_out] every head's normalised contribution.
    result: TextSpan of `heads` (rows in the same order).
    head_means: [layer, head, d_out] means used for the earlier layers' heads.
    """
    if len(heads) != result.text_indices.shape[0]:
        raise ConfigError(f"{len(heads)} heads but a TextSpan result for {result.text_indices.shape[0]}")
    layers = torch.tensor([l for l, _ in heads])
    indices = torch.tensor([h for _, h in heads])
    chosen = heads_all[:, layers, indices]  # [batch, head, d_out]
    rebuilt = reconstruct(chosen.transpose(0, 1), result, n_terms).transpose(0, 1)
    rep = embedding_and_mlps + heads_all.sum((1, 2)) + (rebuilt - chosen).sum(1)
    if ablate_earlier:
        first = int(layers.min())
        rep = rep + (head_means[None, :first].to(rep) - heads_all[:, :first]).sum((1, 2))
    return rep


@torch.no_grad()
def completeness_accuracies(
    bundle: ClipBundle,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classifier: torch.Tensor,
    result: TextSpanResult,
    heads: Sequence[Head],
    head_means: torch.Tensor,
    n_terms: Sequence[int],
    *,
    ablate_earlier: bool = True,
    convention: str = "paper",
) -> CompletenessReport:
    """Top-1 accuracy of `classifier` [class, d_out] per m in `n_terms`, streaming (pixels, labels [batch])."""
    heads = check_heads(heads, bundle.info)
    n_texts = result.text_indices.shape[1]
    bad = [m for m in n_terms if not isinstance(m, int) or not 0 <= m <= n_texts]
    if bad or not n_terms:
        raise ConfigError(f"m must be between 0 and {n_texts} (the texts per head the TextSpan kept), got {bad or 'none'}")
    visual = bundle.model.visual
    folded = fold_weights(visual)
    classifier = classifier.to(bundle.device)
    correct = torch.zeros(len(n_terms) + 1)
    count = 0
    for pixels, labels in batches:
        effects = direct_effects(trace_vit(visual, pixels.to(bundle.device)), folded, convention=convention).scores()
        kept = effects.embedding_term + effects.mlps.sum(1)
        representations = [effects.total()] + [
            completeness_representation(kept, effects.heads, result, heads, head_means, m, ablate_earlier=ablate_earlier)
            for m in n_terms]
        truth = labels.to(bundle.device)
        for row, rep in enumerate(representations):
            correct[row] += float(((rep @ classifier.T).argmax(-1) == truth).sum())
        count += len(truth)
    if count == 0:
        raise DatasetError("no readable images to evaluate the completeness check on")
    accuracy = (correct / count).tolist()
    first = min(l for l, _ in heads)
    return CompletenessReport(accuracy[0], list(zip(n_terms, accuracy[1:])), count, ablate_earlier, first)


def completeness_on_folder(
    bundle: ClipBundle,
    labelled: LabelledImages,
    classifier: torch.Tensor,
    result: TextSpanResult,
    heads: Sequence[Head],
    head_means: torch.Tensor,
    n_terms: Sequence[int],
    *,
    ablate_earlier: bool = True,
    convention: str = "paper",
    batch_size: int = 32,
    progress: Progress | None = None,
    skipped: list[str] | None = None,
) -> CompletenessReport:
    """completeness_accuracies on a labelled image set (labels from the data, never from order)."""
    if classifier.shape[0] != len(labelled.classnames):
        raise ConfigError(f"classifier has {classifier.shape[0]} classes, the image set {len(labelled.classnames)}")
    labels = torch.tensor(labelled.labels)
    batches = ((pixels, labels[indices])
               for indices, pixels in iter_image_batches(labelled.paths, bundle.preprocess, batch_size, skipped=skipped))
    return completeness_accuracies(bundle, track(progress, batches), classifier, result, heads,
                                   head_means, n_terms, ablate_earlier=ablate_earlier, convention=convention)
