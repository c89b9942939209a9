"""Direct-effect mean-ablation: replace components by their mean over a reference image set.

As in the paper (B.2), ablation acts on the decomposition with the final LayerNorm statistics
and |y| frozen: the normalised representation y/|y| = sum of normalised components c~/|y|, and
an ablated component is replaced by its mean over the reference images. It is a linearised
"direct-effect" ablation, not a re-run of the network. Zero-shot accuracy is then measured on a
labelled image set whose labels come from the data (folders or a labels table), never from order.

Both passes stream over images in batches: memory is [batch, layer, head, d_out], whatever the
number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from core.progress import Progress, track
from core.engine.contributions import cls_to_cls, direct_effects, fold_weights
from core.errors import ConfigError, DatasetError, check_index
from core.engine.images import LabelledImages
from core.engine.imagesets import ImageSet, image_batches
from core.engine.models import ClipBundle
from core.engine.trace import trace_vit


@dataclass(frozen=True)
class Components:
    """Normalised direct effects (divided by |y|) of a batch of images, or their means."""

    embedding_term: torch.Tensor  # [batch, d_out]
    mlps: torch.Tensor  # [batch, layer, d_out]
    heads: torch.Tensor  # [batch, layer, head, d_out]
    cls_to_cls: torch.Tensor  # [batch, layer, head, d_out] (part of heads: source token 0)

    def representation(self) -> torch.Tensor:
        """[batch, d_out] the unit-norm image representation they sum to."""
        return self.embedding_term + self.mlps.sum(1) + self.heads.sum((1, 2))


@torch.inference_mode()
def image_components(bundle: ClipBundle, pixels: torch.Tensor, *, convention: str = "paper") -> Components:
    visual = bundle.model.visual
    trace = trace_vit(visual, pixels.to(bundle.device))
    folded = fold_weights(visual)
    effects = direct_effects(trace, folded, convention=convention).scores()
    cls = cls_to_cls(trace, folded, convention=convention) / effects.norm[:, None, None, None]
    return Components(effects.embedding_term, effects.mlps, effects.heads, cls)


@dataclass(frozen=True)
class ComponentMeans:
    means: Components  # each field with batch dim 1
    count: int
    description: str
    convention: str


def means_from_batches(
    bundle: ClipBundle, batches: Iterable[torch.Tensor], *, description: str, convention: str = "paper"
) -> ComponentMeans:
    """Mean of every normalised component over preprocessed pixel batches [batch, 3, H, W] (streaming)."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for pixels in batches:
        parts = image_components(bundle, pixels, convention=convention)
        for name in ("embedding_term", "mlps", "heads", "cls_to_cls"):
            total = getattr(parts, name).sum(0, keepdim=True)
            sums[name] = sums[name] + total if name in sums else total
        count += pixels.shape[0]
    if count == 0:
        raise DatasetError("no readable images to compute means from.")
    return ComponentMeans(Components(**{name: value / count for name, value in sums.items()}), count, description, convention)


def component_means(
    bundle: ClipBundle,
    images: ImageSet | Sequence,
    *,
    description: str,
    convention: str = "paper",
    batch_size: int = 32,
    progress: Progress | None = None,
    skipped: list[str] | None = None,
) -> ComponentMeans:
    """Mean of every normalised component over `images` (an ImageSet, or a list of image files)."""
    batches = (pixels for _, pixels in image_batches(images, bundle.preprocess, batch_size, skipped))
    tracked = track(progress, batches, "component means", -(-len(images) // batch_size))
    return means_from_batches(bundle, tracked, description=description, convention=convention)


@dataclass(frozen=True)
class Ablation:
    """Which components to replace by their means."""

    name: str
    mlps: bool = False  # every MLP and the embedding term
    cls_to_cls: bool = False  # every layer's class-token -> class-token path
    attention_layers: tuple[int, ...] = ()  # whole attention layers
    heads: tuple[tuple[int, int], ...] = ()  # individual (layer, head)


def standard_ablations(n_layers: int, *, per_layer: bool = False) -> list[Ablation]:
    """The paper's table: baseline, MLPs, CLS->CLS, both, then attention layers 0..l accumulatively.

    per_layer adds each attention layer ablated on its own, and all MLPs with it.
    """
    out = [Ablation("baseline"), Ablation("all MLPs", mlps=True), Ablation("CLS->CLS paths", cls_to_cls=True),
           Ablation("MLPs + CLS->CLS", mlps=True, cls_to_cls=True)]
    out += [Ablation(f"attention layers 0..{layer}", attention_layers=tuple(range(layer + 1))) for layer in range(n_layers)]
    if per_layer:
        out += [Ablation(f"attention layer {layer} only", attention_layers=(layer,)) for layer in range(n_layers)]
    return out


def _head_mask(ablation: Ablation, n_layers: int, n_heads: int) -> torch.Tensor:
    mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer in ablation.attention_layers:
        mask[check_index("layer", layer, n_layers)] = True
    for layer, head in ablation.heads:
        mask[check_index("layer", layer, n_layers), check_index("head", head, n_heads)] = True
    return mask


def ablate(parts: Components, means: Components, ablation: Ablation) -> torch.Tensor:
    """[batch, d_out]: the representation with the chosen components replaced by their means."""
    n_layers, n_heads = parts.heads.shape[1:3]
    rep = parts.representation()
    if ablation.mlps:
        rep = rep + (means.embedding_term - parts.embedding_term) + (means.mlps - parts.mlps).sum(1)
    mask = _head_mask(ablation, n_layers, n_heads).to(rep.device)
    rep = rep + ((means.heads - parts.heads) * mask[None, :, :, None]).sum((1, 2))
    if ablation.cls_to_cls:
        # Heads already replaced whole keep their mean; the CLS path of the others is replaced.
        rep = rep + ((means.cls_to_cls - parts.cls_to_cls) * (~mask)[None, :, :, None]).sum((1, 2))
    return rep


@torch.inference_mode()
def accuracies_from_batches(
    bundle: ClipBundle,
    batches: Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    classifiers: dict[str, torch.Tensor],
    means: ComponentMeans,
    ablations: Sequence[Ablation],
) -> tuple[dict[str, list[tuple[str, float]]], int]:
    """Top-1 zero-shot accuracy of each classifier [class, d_out] under each ablation.

    batches yield (pixels, {task: labels [batch]}); a label of -1 leaves the image out of that task.
    Returns ({task: [(ablation name, accuracy)]}, images seen).
    """
    correct = {task: torch.zeros(len(ablations)) for task in classifiers}
    counted = {task: 0 for task in classifiers}
    seen = 0
    for pixels, labels in batches:
        parts = image_components(bundle, pixels, convention=means.convention)
        representations = [ablate(parts, means.means, ablation) for ablation in ablations]
        for task, classifier in classifiers.items():
            truth = labels[task].to(bundle.device)
            keep = truth >= 0
            counted[task] += int(keep.sum())
            for row, rep in enumerate(representations):
                predicted = (rep @ classifier.T).argmax(-1)
                correct[task][row] += float(((predicted == truth) & keep).sum())
        seen += pixels.shape[0]
    if seen == 0:
        raise DatasetError("no readable images to evaluate.")
    table = {task: [(a.name, float(correct[task][row] / max(counted[task], 1))) for row, a in enumerate(ablations)]
             for task in classifiers}
    return table, seen


@dataclass
class AblationReport:
    rows: list[tuple[str, float]]
    n_images: int
    means_from: str
    means_count: int
    evaluated_on: str
    convention: str
    model: str
    classifier: str
    skipped: list[str] = field(default_factory=list)


def ablation_accuracies(
    bundle: ClipBundle,
    labelled: ImageSet | LabelledImages,
    classifier: torch.Tensor,
    means: ComponentMeans,
    ablations: Sequence[Ablation],
    *,
    classifier_description: str,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> AblationReport:
    """Top-1 zero-shot accuracy of `classifier` [class, d_out] on a labelled image set (an ImageSet with labels,
    or a LabelledImages) under each ablation."""
    if labelled.labels is None:
        raise DatasetError(f"{labelled.description} has no labels: give a labelled folder or a label column")
    if classifier.shape[0] != len(labelled.classnames):
        raise ConfigError(f"classifier has {classifier.shape[0]} classes, the image set {len(labelled.classnames)}.")
    labels = torch.tensor(labelled.labels)
    skipped: list[str] = []
    batches = ((pixels, {"label": labels[indices]})
               for indices, pixels in image_batches(labelled, bundle.preprocess, batch_size, skipped))
    table, seen = accuracies_from_batches(bundle, track(progress, batches), {"label": classifier},
                                          means, ablations)
    return AblationReport(table["label"], seen, means.description, means.count, labelled.description,
                          means.convention, bundle.info.spec, classifier_description, skipped)
