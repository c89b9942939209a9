"""What MLP neurons write, in words: sparse text decompositions of their principal components,
the paper's ablation experiment, neuron search by text and per-image activation maps (paper 2).

- `decompose_neurons`: each neuron's first PC r_n (from `core.neurons.stats`) as a sparse signed
  sum of text embeddings, by OMP over a dictionary of the text pool (B.10). The dictionary is
  "normalise_texts" (each text vector unit norm; default) or "original" (the paper code's:
  centred over texts, then each d_out column scaled to norm 100); every result records which.
- `neuron_ablation_accuracies`: zero-shot accuracy when the layer's second-order effects are
  mean-ablated, kept only where significant (|Delta_n| > tau_n) or only where not, or replaced by
  their rank-1 projection <Delta_n, u_n> u_n on a unit direction per neuron: the PC r_n, or the
  normalised sparse reconstruction of r_n (B.9, with the paper code's missing normalisation fixed).
- `search_neurons`: neurons ranked by cos(r_n, text embedding).
- `activation_map`: a neuron's post-activation at every patch token.

>>> stats = neuron_stats(visual, 9, batches)                     # core.neurons.stats
>>> words = decompose_neurons(stats.pcs, encode_texts(bundle, texts))
>>> words.terms(4, texts)[:4]                                   # [(text, weight), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from core.errors import ConfigError, DatasetError, check_index
from core.neurons.stats import NeuronStats, Progress
from core.neurons.second_order import check_layer, second_order_basis, second_order_effects
from core.neurons.sparse import DEFAULT_N_TERMS, DICTIONARY_MODES, SparseCode, iter_omp, prepare_dictionary, reconstruct
from core.engine.images import load_image
from core.engine.shared_trace import shared_trace
from core.engine.trace import VitTrace, trace_vit

DEFAULT_DICTIONARY = "normalise_texts"
ABLATIONS = ("baseline", "mean-ablated layer", "without significant", "without insignificant", "rank-1: PC #1")
SPARSE_ABLATION = "rank-1: sparse text reconstruction"


@dataclass(frozen=True)
class NeuronTexts:
    """Sparse text decomposition of one layer's PCs; text indices refer to the pool it was built from."""

    indices: torch.Tensor  # [neuron, term] long, by selection order; -1 pads early stops
    coefficients: torch.Tensor  # [neuron, term]
    reconstruction_cosine: torch.Tensor  # [neuron] cos(r_n, its sparse reconstruction); 0 for empty codes
    dictionary_mode: str

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (artifact group `sparse_L{layer}`)."""
        return {"indices": self.indices, "coefficients": self.coefficients,
                "reconstruction_cosine": self.reconstruction_cosine}

    def code(self) -> SparseCode:
        n_selected = (self.indices >= 0).sum(1)
        return SparseCode(self.indices, self.coefficients, n_selected, self.coefficients.new_zeros(len(self.indices)))

    def terms(self, neuron: int, texts: list[str]) -> list[tuple[str, float]]:
        """(text, signed weight) of one neuron, by |weight| descending."""
        check_index("neuron", neuron, len(self.indices))
        pairs = [(texts[i], w) for i, w in zip(self.indices[neuron].tolist(), self.coefficients[neuron].tolist())
                 if i >= 0]
        return sorted(pairs, key=lambda pair: -abs(pair[1]))

    def reconstructions(self, dictionary: torch.Tensor) -> torch.Tensor:
        """[neuron, d_out] unit-norm reconstructions r^_n / |r^_n| (zero for empty codes)."""
        return torch.nn.functional.normalize(reconstruct(self.code(), dictionary).float(), dim=-1)


def default_terms(n_texts: int, d_out: int) -> int:
    """The paper's 128 terms (for d_out 512), at most d_out / 4 and the pool size.

    With as many terms as dimensions OMP reconstructs any PC exactly with large cancelling
    weights, which says nothing about the neuron; a quarter of d_out keeps the paper's sparsity.
    """
    return max(1, min(DEFAULT_N_TERMS, n_texts, d_out // 4))


def check_dictionary_mode(mode: str) -> str:
    if mode not in DICTIONARY_MODES:
        raise ConfigError(f"unknown dictionary mode {mode!r}; choose one of {', '.join(DICTIONARY_MODES)}")
    return mode


def text_dictionary(text_embeddings: torch.Tensor, mode: str = DEFAULT_DICTIONARY) -> torch.Tensor:
    """[text, d_out] dictionary in `mode` (see `core.neurons.sparse.prepare_dictionary`)."""
    return prepare_dictionary(text_embeddings.float(), check_dictionary_mode(mode))


def decompose_neurons(
    pcs: torch.Tensor, text_embeddings: torch.Tensor, *, n_terms: int | None = None,
    dictionary_mode: str = DEFAULT_DICTIONARY, progress: Progress | None = None, batch_size: int = 256,
) -> NeuronTexts:
    """OMP of every PC pcs [neuron, d_out] over the text dictionary [text, d_out] (n_terms: `default_terms`)."""
    dictionary = text_dictionary(text_embeddings, dictionary_mode)  # OMP runs where the texts are
    n_terms = default_terms(*dictionary.shape) if n_terms is None else n_terms
    pcs = pcs.to(dictionary.device, torch.float32)
    live = pcs.norm(dim=-1) > 0  # a neuron that never deviates has no PC to explain
    indices = torch.full((len(pcs), n_terms), -1, dtype=torch.long, device=pcs.device)
    coefficients = pcs.new_zeros(len(pcs), n_terms)
    if live.any():
        targets = pcs[live]
        parts = iter_omp(targets, dictionary, n_terms, batch_size=batch_size)
        total = -(-len(targets) // batch_size)
        codes = list(progress(parts, desc="sparse text decomposition", total=total) if progress else parts)
        indices[live] = torch.cat([c.indices for c in codes])
        coefficients[live] = torch.cat([c.coefficients for c in codes]).float()
    result = NeuronTexts(indices, coefficients, torch.zeros(len(pcs)), dictionary_mode)
    recon = reconstruct(result.code(), dictionary).float()
    cosine = torch.nn.functional.cosine_similarity(recon, pcs, dim=-1)
    return NeuronTexts(indices, coefficients, torch.where(live, cosine, 0.0), dictionary_mode)


# ---------------------------------------------------------------- ablation experiment (B.9)

def ablated_representations(
    y: torch.Tensor, phi: torch.Tensor, stats: NeuronStats, directions: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Representations [batch, d_out] under each ablation, in the coefficient-scaled units of phi.

    y: [batch, d_out] unnormalised embeddings; phi: [batch, neuron, d_out] second-order effects
    (same coefficient and /|y| as `stats`); directions: name -> [neuron, d_out] unit vectors u_n
    for extra rank-1 rows (e.g. the sparse reconstructions), besides the PC.
    """
    base = stats.coefficient * torch.nn.functional.normalize(y, dim=-1)
    deviations = phi - stats.mean
    significant = (deviations.norm(dim=-1) > stats.thresholds).unsqueeze(-1)  # [batch, neuron, 1]
    ablated = base - phi.sum(1) + stats.mean.sum(0)
    out = {"baseline": base, "mean-ablated layer": ablated,
           "without significant": ablated + (deviations * ~significant).sum(1),
           "without insignificant": ablated + (deviations * significant).sum(1)}
    for name, units in {"rank-1: PC #1": stats.pcs, **(directions or {})}.items():
        projections = torch.einsum("bnd,nd->bn", deviations, units)
        out[name] = ablated + projections @ units
    return out


@torch.inference_mode()
def neuron_ablation_accuracies(
    visual: nn.Module, stats: NeuronStats, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classifier: torch.Tensor, *, directions: dict[str, torch.Tensor] | None = None,
    progress: Progress | None = None, total: int | None = None,
) -> tuple[dict[str, float], int]:
    """Top-1 zero-shot accuracy of `classifier` [class, d_out] under each ablation of `stats.layer`.

    batches yield (pixels [batch, 3, H, W], labels [batch]); label -1 leaves an image out.
    Returns ({ablation: accuracy}, images evaluated).
    """
    basis = second_order_basis(visual, stats.layer)
    device = basis.directions.device
    stats = stats.to(device)
    directions = {name: units.to(device) for name, units in (directions or {}).items()}
    correct: dict[str, int] = {}
    counted = 0
    iterable = progress(batches, desc=f"layer {stats.layer}: ablations", total=total) if progress else batches
    for pixels, labels in iterable:
        trace = trace_vit(visual, pixels.to(device), mlp_layers=[stats.layer])
        phi = second_order_effects(trace, basis, mode=stats.mode, coefficient=stats.coefficient)
        labels = torch.as_tensor(labels, device=device)
        keep = labels >= 0
        for name, rep in ablated_representations(trace.embedding, phi, stats, directions).items():
            hits = ((rep @ classifier.to(rep).T).argmax(-1) == labels) & keep
            correct[name] = correct.get(name, 0) + int(hits.sum())
        counted += int(keep.sum())
    if counted == 0:
        raise DatasetError("no labelled, readable images to evaluate the ablations on.")
    return {name: hits / counted for name, hits in correct.items()}, counted


# ---------------------------------------------------------------- search and maps

def search_neurons(pcs: torch.Tensor, text_embedding: torch.Tensor, top: int = 20) -> list[tuple[int, float]]:
    """(neuron, cos(r_n, text)) for the `top` neurons whose PC points most towards the text [d_out]."""
    if text_embedding.ndim != 1 or text_embedding.shape[0] != pcs.shape[1]:
        raise ConfigError(f"the text embedding has shape {list(text_embedding.shape)}, the PCs have d_out "
                          f"{pcs.shape[1]}: embed the text with the same model")
    cosine = torch.nn.functional.cosine_similarity(pcs.float(), text_embedding.to(pcs.device).float()[None], dim=-1)
    values, order = cosine.topk(min(top, len(cosine)))
    return list(zip(order.tolist(), values.tolist()))


def activation_map(trace: VitTrace, layer: int, neuron: int, grid: tuple[int, int], image: int = 0) -> torch.Tensor:
    """[grid_h, grid_w]: post-activation of `neuron` of MLP `layer` at every patch token of one image."""
    post = trace.mlp_post.get(layer)
    if post is None:
        raise ConfigError(f"the trace has no MLP activations of layer {layer}; trace with mlp_layers=[{layer}].")
    check_index("neuron", neuron, post.shape[-1])
    return post[image, 1:, neuron].reshape(grid)


@torch.inference_mode()
def image_effects(visual: nn.Module, layer: int, pixels: torch.Tensor, *, mode: str = "paper",
                  coefficient: float = 100.0) -> tuple[torch.Tensor, VitTrace]:
    """(phi [batch, neuron, d_out], the trace) of MLP `layer` for preprocessed pixels [batch, 3, H, W]."""
    basis = second_order_basis(visual, layer)
    # shared: the activation maps, the concepts and other lenses of the same image read the same traced forward
    trace = shared_trace(visual, pixels.to(basis.directions.device), mlp_layers=[layer])
    return second_order_effects(trace, basis, mode=mode, coefficient=coefficient), trace


def image_second_order(bundle, image, layer: int, *, mode: str = "paper") -> torch.Tensor:
    """phi [neuron, d_out]: the second-order effect of every neuron of MLP `layer` on one image (a PIL image or a
    path), through every later attention head, in the paper's convention (x100, divided by |y|; `mode` as
    `second_order_effects`). `bundle` is a loaded model (`core.engine.models.load_clip`); the result is on the CPU.
    What `python -m core second-order` writes."""
    visual = bundle.model.visual
    check_layer(visual, layer)
    pil = load_image(image) if isinstance(image, (str, Path)) else image
    phi, _ = image_effects(visual, layer, bundle.preprocess(pil)[None], mode=mode)
    return phi[0].cpu()
