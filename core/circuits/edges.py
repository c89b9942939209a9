"""Edges of the circuit graph: neuron (layer l) -> head (layer l' > l), from weights or from images.

With the factorisation of `core.circuits.paths` (part_n^{l'h}(I) = c(I) s_n^{l'h}(I) u_n^{l'h} + c(I) b^{l'h}(I)):

- **weight edge** (no images): W(n -> l'h) = |u_n^{l'h}| / (|w_n| |M^{l'h}|_F), M^{l'h} = head_out^{l'h} W_V^h
  diag(gamma_1^{l'}) the path's [d_model -> d_out] map: an Elhage-style composition score in [0, 1], how much of
  the map the neuron's write uses (an upper bound on what the path can carry, whatever the images). Its
  signed form against a target t is <u_n^{l'h}, t>: what the path writes along t per unit of s.
- **data edge** against a target t (a text embedding, a class, or the neuron's first PC r_n):
  e(n -> l'h | I, t) = <part_n^{l'h}(I), t>; summed over (l', h) it is <phi_n(I), t> exactly. Aggregated over
  the images where the neuron is active (paper 2's selection: its top-k images by |phi_n(I) - mu_n|, the
  `core.neurons.stats` ranking, from bases or computed here) as the mean, and each edge's share
  mean / sum |mean| (signed: the shares' magnitudes sum to 1). Excitatory when the mean is > 0, inhibitory < 0.
- **head in-edges**: the same table read by column: for head l'h, the neurons of earlier layers that feed it.

Everything streams over (ids, pixels) batches with memory bounded by a batch: per image only
[neuron, later, head] scalars are formed; the weights enter as one [neuron, later, head] projection per target,
computed `chunk` neurons at a time (never [neuron, later, head, d_out] for a whole layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from core.circuits.paths import (DEFAULT_CHUNK, PathWeights, later_layers, neuron_list, path_terms, path_weights)
from core.engine.trace import trace_vit
from core.errors import ConfigError, DatasetError
from core.neurons.second_order import (COEFFICIENT, bias_paths, check_layer, mlp_output_weights, path_values,
                                       value_weights)
from core.neurons.stats import TopDeviations, check_k, first_principal_components

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (ids [batch], pixels [batch, 3, H, W])
Progress = Callable[..., Iterable]


def _progress(progress: Progress | None, iterable, desc: str, total: int | None = None):
    return progress(iterable, desc=desc, total=total) if progress else iterable


def _chunks(items: list[int], size: int) -> list[list[int]]:
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"chunk must be a positive number of neurons, got {size!r}")
    return [items[start:start + size] for start in range(0, len(items), size)]


def _per_neuron(targets: torch.Tensor | None, n: int, d_out: int) -> torch.Tensor | None:
    """targets [1 or neuron, d_out] -> [neuron, d_out] (one target shared by every neuron is expanded)."""
    if targets is None:
        return None
    if targets.ndim != 2 or targets.shape[1] != d_out or targets.shape[0] not in (1, n):
        raise ConfigError(f"targets must be [1 or {n}, {d_out}] (one shared, or one per neuron), "
                          f"got {list(targets.shape)}")
    if not torch.isfinite(targets).all():
        raise ConfigError("the target directions hold NaN or inf values")
    return targets.expand(n, -1).float()


def path_map_norms(visual: nn.Module, layer: int, later=None) -> torch.Tensor:
    """[later, head]: |M^{l'h}|_F, the Frobenius norm of each path's map head_out^{l'h} W_V^h diag(gamma_1^{l'})."""
    from core.engine.contributions import fold_weights

    blocks = visual.transformer.resblocks
    later = later_layers(len(blocks), layer, later)
    head_out = fold_weights(visual).head_out
    rows = []
    for index in later:
        block = blocks[index]
        w_v, _ = value_weights(block)  # [head, d_head, d_model]
        gain = block.ln_1.weight.detach() if block.ln_1.weight is not None else torch.ones(w_v.shape[-1])
        gram = head_out[index] @ head_out[index].transpose(-1, -2)  # [head, d_head, d_head]
        rows.append(torch.einsum("hdm,hde,hem,m->h", w_v, gram, w_v, gain.to(w_v) ** 2).clamp(min=0).sqrt())
    return torch.stack(rows)


# ---------------------------------------------------------------- weight edges

@dataclass(frozen=True)
class WeightEdges:
    """Weight edges of some neurons of one MLP layer to every later head (no images)."""

    layer: int
    later_layers: tuple[int, ...]
    neurons: tuple[int, ...]
    composition: torch.Tensor  # [neuron, later, head] in [0, 1]
    signed: torch.Tensor | None  # [neuron, later, head] <u_n^{l'h}, t_n>, when a target was given
    target: str | None  # what t is, in words


@torch.no_grad()
def weight_edges(visual: nn.Module, layer: int, *, neurons=None, later=None, targets: torch.Tensor | None = None,
                 target: str | None = None, chunk: int = DEFAULT_CHUNK) -> WeightEdges:
    """Composition scores (and, with targets [1 or neuron, d_out], signed edges) of `neurons` (default all).

    Memory: `chunk` neurons' d_head-wide values at a time (ViT-B-16 layer 0, chunk 256: 8.6 MB).
    """
    check_layer(visual, layer)
    d_mlp = mlp_output_weights(visual.transformer.resblocks[layer])[0].shape[1]
    chosen = neuron_list(neurons, d_mlp)
    later = later_layers(len(visual.transformer.resblocks), layer, later)
    map_norms = path_map_norms(visual, layer, later)  # [later, head]
    per_neuron = _per_neuron(targets, len(chosen), _d_out(visual))
    composition, signed = [], []
    for start, part in _enumerate_chunks(chosen, chunk):
        weights = path_weights(visual, layer, part, later)
        denominator = weights.write_norms[:, None, None] * map_norms[None]
        composition.append(torch.where(denominator > 0, weights.norms() / denominator.clamp(min=1e-30), 0.0))
        if per_neuron is not None:
            signed.append(weights.project_own(per_neuron[start:start + len(part)]))
    return WeightEdges(layer, later, tuple(chosen), torch.cat(composition).clamp(max=1.0).cpu(),
                       torch.cat(signed).cpu() if signed else None, target if per_neuron is not None else None)


def _enumerate_chunks(items: list[int], size: int):
    start = 0
    for part in _chunks(items, size):
        yield start, part
        start += len(part)


def _d_out(visual: nn.Module) -> int:
    return visual.proj.shape[1] if visual.proj is not None else visual.ln_post.normalized_shape[0]


# ---------------------------------------------------------------- data edges

@dataclass(frozen=True)
class DataEdges:
    """Data edges of some neurons, averaged over the images where each neuron is active."""

    layer: int
    later_layers: tuple[int, ...]
    neurons: tuple[int, ...]
    mean: torch.Tensor  # [neuron, later, head] mean over the neuron's images of e(n -> l'h | I, t_n)
    count: torch.Tensor  # [neuron] images each mean is over
    target: str
    mode: str
    coefficient: float

    @property
    def total(self) -> torch.Tensor:
        """[neuron]: the mean of <phi_n(I), t_n> over the same images (the sum of the edges)."""
        return self.mean.sum((1, 2))

    def share(self) -> torch.Tensor:
        """[neuron, later, head]: mean / sum |mean| (signed; zero for a neuron whose edges are all zero)."""
        scale = self.mean.abs().sum((1, 2), keepdim=True)
        return torch.where(scale > 0, self.mean / scale.clamp(min=1e-30), 0.0)


class DataEdgeAccumulator:
    """Streams data edges of MLP `layer`'s `neurons` over traced batches (mlp_layers must include `layer`).

    targets: [1 or neuron, d_out] (a text shared by all, or one per neuron such as r_n). active: [neuron, k]
    image ids each neuron is averaged over (paper 2's top-k), or None for every image. Memory: the
    [neuron, later, head] projections plus one batch of [batch, neuron, later, head] edges.
    """

    def __init__(self, visual: nn.Module, layer: int, targets: torch.Tensor, *, neurons=None, later=None,
                 active: torch.Tensor | None = None, target: str = "target", mode: str = "paper",
                 coefficient: float = COEFFICIENT, chunk: int = DEFAULT_CHUNK):
        self.bias = bias_paths(visual, layer)
        self.neurons = neuron_list(neurons, self.bias.d_mlp)
        self.later = later_layers(self.bias.n_layers, layer, later)
        self.targets = _per_neuron(targets, len(self.neurons), _d_out(visual))
        self.shared_target = targets.shape[0] == 1  # one target for all: the bias shares project once per path
        if active is not None and (active.ndim != 2 or active.shape[0] != len(self.neurons)):
            raise ConfigError(f"active image ids must be [{len(self.neurons)}, k], got {list(active.shape)}")
        self.active = None if active is None else active.long()
        self.layer, self.target, self.mode, self.coefficient = layer, target, mode, coefficient
        with torch.no_grad():
            self.projected = torch.cat([  # [neuron, later, head] <u_n^{l'h}, t_n>
                path_weights(visual, layer, part, self.later).project_own(self.targets[start:start + len(part)])
                for start, part in _enumerate_chunks(self.neurons, chunk)])
        self.sums = torch.zeros(self.projected.shape, dtype=torch.float64)
        self.counts = torch.zeros(len(self.neurons), dtype=torch.long)

    @torch.inference_mode()
    def edges(self, trace) -> torch.Tensor:
        """[batch, neuron, later, head]: e(n -> l'h | I, t_n) for every image of the trace."""
        terms = path_terms(trace, self.bias, neurons=self.neurons, later=self.later, mode=self.mode,
                           coefficient=self.coefficient)
        projected = self.projected.to(terms.scalars.device)
        edges = terms.scalars * projected[None]
        if terms.shared is not None and self.shared_target:
            edges = edges + torch.einsum("blho,o->blh", terms.shared, self.targets[0].to(terms.shared))[:, None]
        elif terms.shared is not None:
            edges = edges + torch.einsum("blho,no->bnlh", terms.shared, self.targets.to(terms.shared))
        return edges

    def add(self, trace, ids: torch.Tensor) -> None:
        edges = self.edges(trace).cpu()
        ids = torch.as_tensor(ids, dtype=torch.long).cpu()
        if self.active is None:
            mask = torch.ones(len(ids), len(self.neurons), dtype=torch.bool)
        else:
            mask = (self.active[None] == ids[:, None, None]).any(-1)  # [batch, neuron]
        self.sums += (edges.double() * mask[..., None, None]).sum(0)
        self.counts += mask.sum(0)

    def result(self) -> DataEdges:
        if int(self.counts.min()) == 0:
            missing = [n for n, c in zip(self.neurons, self.counts.tolist()) if c == 0][:5]
            raise DatasetError(f"no image of the set is among the active images of neuron(s) {missing}: the active "
                               "images come from another image set; use the one the bases were built on")
        mean = (self.sums / self.counts[:, None, None]).float()
        return DataEdges(self.layer, self.later, tuple(self.neurons), mean, self.counts.clone(), self.target,
                         self.mode, self.coefficient)


@torch.inference_mode()
def data_edges(visual: nn.Module, layer: int, batches: Batches, targets: torch.Tensor, *, neurons=None,
               later=None, active: torch.Tensor | None = None, target: str = "target", mode: str = "paper",
               coefficient: float = COEFFICIENT, chunk: int = DEFAULT_CHUNK, progress: Progress | None = None,
               total: int | None = None) -> DataEdges:
    """Data edges of MLP `layer`'s neurons averaged over their active images of `batches` (see the accumulator)."""
    accumulator = DataEdgeAccumulator(visual, layer, targets, neurons=neurons, later=later, active=active,
                                      target=target, mode=mode, coefficient=coefficient, chunk=chunk)
    device = accumulator.bias.ones_proj.device
    for ids, pixels in _progress(progress, batches, f"layer {layer}: data edges", total):
        accumulator.add(trace_vit(visual, pixels.to(device), mlp_layers=[layer]), ids)
    return accumulator.result()


# ---------------------------------------------------------------- active images (paper 2's selection)

@dataclass(frozen=True)
class ActiveImages:
    """Each neuron's top-k images by |phi_n(I) - mu_n| (the `core.neurons.stats` ranking) and its first PC."""

    layer: int
    neurons: tuple[int, ...]
    ids: torch.Tensor  # [neuron, k] best first
    norms: torch.Tensor  # [neuron, k]
    pcs: torch.Tensor  # [neuron, d_out] r_n
    mean: torch.Tensor  # [neuron, d_out] mu_n
    n_images: int


@torch.inference_mode()
def _neuron_effects(visual, bias, weights: list[tuple[list[int], PathWeights]], directions: dict, neurons,
                    pixels, mode, coefficient) -> torch.Tensor:
    """[batch, neuron, d_out]: phi of the chosen neurons, summed from their path parts chunk by chunk."""
    trace = trace_vit(visual, pixels, mlp_layers=[bias.layer])
    terms = path_terms(trace, bias, neurons=neurons, mode=mode, coefficient=coefficient)
    shared = terms.shared.sum((1, 2))[:, None] if terms.shared is not None else 0.0
    parts, start = [], 0
    for part, chunk_weights in weights:
        u = directions.get(start)
        if u is None:
            u = chunk_weights.directions()
        parts.append(torch.einsum("bnlh,nlho->bno", terms.scalars[:, start:start + len(part)], u))
        start += len(part)
    return torch.cat(parts, 1) + shared


def select_active(visual: nn.Module, layer: int, batches: Callable[[], Batches], *, neurons, k: int,
                  n_images: int | None = None, mode: str = "paper", coefficient: float = COEFFICIENT,
                  chunk: int = DEFAULT_CHUNK, progress: Progress | None = None, total: int | None = None,
                  direction_budget: int = 64 * 2**20) -> ActiveImages:
    """Paper 2's selection for the chosen neurons, in two passes over `batches()` (mean, then top-k deviations).

    The same rules as `core.neurons.stats` (total order by norm then id, first PC in float64 with its sign
    rule), computed from the neurons' path parts so that no [neuron, later, head, d_out] tensor is built for
    more than a chunk (or for the chosen neurons when they fit in `direction_budget` bytes).
    """
    if n_images is not None:
        check_k(k, n_images)
    check_layer(visual, layer)
    d_mlp = mlp_output_weights(visual.transformer.resblocks[layer])[0].shape[1]
    chosen = neuron_list(neurons, d_mlp)
    weights = [(part, path_weights(visual, layer, part)) for part in _chunks(chosen, chunk)]
    n_paths = weights[0][1].values.shape[1] * weights[0][1].n_heads
    directions = {}
    if len(chosen) * n_paths * _d_out(visual) * 4 <= direction_budget:
        start = 0
        for part, chunk_weights in weights:
            directions[start] = chunk_weights.directions()
            start += len(part)
    device = weights[0][1].values.device
    bias = bias_paths(visual, layer)
    total_sum, count = None, 0
    for ids, pixels in _progress(progress, batches(), f"layer {layer}: means", total):
        phi = _neuron_effects(visual, bias, weights, directions, chosen, pixels.to(device), mode, coefficient)
        part_sum = phi.sum(0, dtype=torch.float64)
        total_sum = part_sum if total_sum is None else total_sum + part_sum
        count += phi.shape[0]
    if count == 0:
        raise DatasetError("no readable images in the image set: nothing to select active images from.")
    check_k(k, count)
    mean = (total_sum / count).float()
    top = TopDeviations(len(chosen), k, mean.shape[1], dtype=torch.float32, device=mean.device)
    seen = 0
    for ids, pixels in _progress(progress, batches(), f"layer {layer}: top-{k} images", total):
        deviations = _neuron_effects(visual, bias, weights, directions, chosen, pixels.to(device), mode,
                                     coefficient) - mean
        top.update(torch.as_tensor(ids, dtype=torch.long), deviations, deviations.norm(dim=-1))
        seen += deviations.shape[0]
    if seen != count:
        raise DatasetError(f"the image set changed between the two passes ({count} images, then {seen})")
    order = top.order()
    norms, ids = top.norms.gather(1, order), top.ids.gather(1, order)
    pcs, _ = first_principal_components(top.vectors, order)
    return ActiveImages(layer, tuple(chosen), ids, norms, pcs, mean, count)


# ---------------------------------------------------------------- head in-edges

@dataclass(frozen=True)
class InEdges:
    """Weight (and data) edges into one head from every neuron of some earlier layers."""

    head: tuple[int, int]
    layers: tuple[int, ...]
    composition: dict[int, torch.Tensor]  # layer -> [neuron]
    signed: dict[int, torch.Tensor]  # layer -> [neuron] (layers with a target)
    data: dict[int, torch.Tensor]  # layer -> [neuron] mean data edge (layers with image data)
    target: str | None

    def ranked(self, top: int, by: str = "auto") -> list[tuple[int, int, float]]:
        """(layer, neuron, score) of the `top` strongest in-edges by |data|, else |signed|, else composition;
        ties by (layer, neuron)."""
        source = {"data": self.data, "signed": self.signed, "composition": self.composition}
        if by == "auto":
            by = "data" if self.data else "signed" if self.signed else "composition"
        values = source[by]
        rows = [(layer, neuron, float(score)) for layer in sorted(values)
                for neuron, score in enumerate(values[layer].tolist())]
        return sorted(rows, key=lambda row: (-abs(row[2]), row[0], row[1]))[:top]


@torch.no_grad()
def head_in_edges(visual: nn.Module, head: tuple[int, int], layers: list[int], *,
                  targets: dict[int, torch.Tensor] | None = None, target: str | None = None,
                  chunk: int = DEFAULT_CHUNK) -> InEdges:
    """Weight edges from every neuron of `layers` (each before the head's layer) into `head` = (l', h).

    targets: layer -> [1 or neuron, d_out] for signed edges (a text for all, or each layer's PCs).
    """
    from core.engine.contributions import fold_weights

    l2, h = head
    n_layers = len(visual.transformer.resblocks)
    if not 0 < l2 < n_layers or not 0 <= h < visual.transformer.resblocks[l2].attn.num_heads:
        raise ConfigError(f"head {l2}.{h} is not a head of a layer with earlier MLPs (layers 1..{n_layers - 1})")
    bad = [layer for layer in layers if not 0 <= layer < l2]
    if bad or not layers:
        raise ConfigError(f"in-edges of head {l2}.{h} come from MLP layers 0..{l2 - 1}, got {list(layers)}")
    head_out = fold_weights(visual).head_out[l2, h]  # [d_head, d_out]
    gram = head_out @ head_out.T
    composition, signed = {}, {}
    for layer in sorted(set(layers)):
        map_norm = float(path_map_norms(visual, layer, [l2])[0, h])
        w, _ = mlp_output_weights(visual.transformer.resblocks[layer])
        per_neuron = _per_neuron((targets or {}).get(layer), w.shape[1], head_out.shape[1])
        parts_c, parts_s = [], []
        for start, part in _enumerate_chunks(list(range(w.shape[1])), chunk):
            values = path_values(visual, layer, part, [l2])[:, 0, h]  # [neuron, d_head]
            norms = torch.einsum("nd,de,ne->n", values, gram, values).clamp(min=0).sqrt()
            denominator = w[:, part].norm(dim=0) * map_norm
            parts_c.append(torch.where(denominator > 0, norms / denominator.clamp(min=1e-30), 0.0))
            if per_neuron is not None:
                parts_s.append(torch.einsum("nd,do,no->n", values, head_out,
                                            per_neuron[start:start + len(part)].to(values)))
        composition[layer] = torch.cat(parts_c).clamp(max=1.0).cpu()
        if parts_s:
            signed[layer] = torch.cat(parts_s).cpu()
    return InEdges((l2, h), tuple(sorted(set(layers))), composition, signed, {}, target if signed else None)
