"""Concept discovery for one image (paper 2, appendix A.5, with the notebook's threshold bug fixed).

Activated neurons N(I) = {n : |Delta_n(I)| > tau_n}, where Delta_n = phi_n - mu_n and tau_n is
the k-th largest |Delta_n| over the statistics' image set (the norm, not a sorted vector: the
official notebook sorted the d_out-vectors instead). Each word j of the text pool scores

    w_j(I) = sum_{n in N(I)} gamma_j^n |Delta_n(I)|

with gamma^n the sparse text coefficients of neuron n's PC; the top words are the concepts.

>>> concepts = discover_concepts(phi[0], stats, words, texts, top=10)
>>> concepts.words[:3]      # [(text, score), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.engine.labels import neuron_label
from core.errors import ConfigError
from core.neurons.stats import NeuronStats
from core.neurons.texts import NeuronTexts


@dataclass(frozen=True)
class Concepts:
    """Activated neurons of one layer for one image, and the words they vote for."""

    layer: int
    neurons: list[int]  # activated neurons, by |Delta_n| / tau_n descending
    norms: list[float]  # |Delta_n(I)|
    thresholds: list[float]  # tau_n
    words: list[tuple[str, float]]  # (text, w_j > 0), by score descending

    def as_dict(self) -> dict:
        return {"layer": self.layer,
                "activated": [{"neuron": n, "label": neuron_label(self.layer, n), "norm": v, "threshold": t}
                              for n, v, t in zip(self.neurons, self.norms, self.thresholds)],
                "words": [{"text": text, "score": score} for text, score in self.words]}


def word_scores(norms: torch.Tensor, active: torch.Tensor, words: NeuronTexts, n_texts: int) -> torch.Tensor:
    """[text]: w_j = sum over active neurons of gamma_j^n |Delta_n|. norms [neuron], active [neuron] bool."""
    indices = words.indices[active]  # [active, term]
    weights = words.coefficients[active] * norms[active, None].to(words.coefficients)
    valid = indices >= 0
    scores = torch.zeros(n_texts, dtype=torch.float64)
    scores.index_add_(0, indices[valid], weights[valid].double())
    return scores


def effect_sizes(phi: torch.Tensor, stats: NeuronStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(|Delta_n(I)| [neuron], tau_n [neuron]) on the CPU for one image's effects phi [neuron, d_out]."""
    if phi.ndim != 2 or phi.shape != stats.mean.shape:
        raise ConfigError(f"phi must be one image's effects [neuron, d_out] = {list(stats.mean.shape)}, "
                          f"got {list(phi.shape)}")
    norms = (phi.float() - stats.mean.to(phi.device).float()).norm(dim=-1).cpu()
    return norms, stats.thresholds.float().cpu()


def discover_concepts(phi: torch.Tensor, stats: NeuronStats, words: NeuronTexts, texts: list[str], *,
                      top: int = 10, scale: float = 1.0) -> Concepts:
    """Concepts of one image from its effects phi [neuron, d_out] (same convention as `stats`).

    `scale` multiplies every threshold (1: the paper's rule; above 1 keeps only stronger activations).
    """
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    if not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
        raise ConfigError(f"the threshold scale must be a positive number, got {scale!r}")
    norms, thresholds = effect_sizes(phi, stats)
    thresholds = thresholds * scale
    active = norms > thresholds
    scores = word_scores(norms, active, words, len(texts))
    order = scores.argsort(descending=True)[:top]
    ranked = [(texts[j], float(scores[j])) for j in order.tolist() if scores[j] > 0]
    neurons = active.nonzero()[:, 0]
    neurons = neurons[(norms[neurons] / thresholds[neurons]).argsort(descending=True)]
    return Concepts(stats.layer, neurons.tolist(), norms[neurons].tolist(), thresholds[neurons].tolist(), ranked)


def image_concepts(bundle, basis, image, *, top: int = 10, scale: float = 1.0) -> Concepts:
    """Concepts of a PIL image for one layer's `core.neurons.bases.NeuronBasis`."""
    from core.neurons.texts import image_effects

    pixels = bundle.preprocess(image)[None]
    phi, _ = image_effects(bundle.model.visual, basis.stats.layer, pixels, mode=basis.stats.mode,
                           coefficient=basis.stats.coefficient)
    return discover_concepts(phi[0], basis.stats, basis.words, basis.texts, top=top, scale=scale)
