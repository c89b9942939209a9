"""A neuron's out-edges and a head's in-edges with everything that says what they mean: the command line and
the Circuits tab both show these.

- `neuron_circuit`: the paths of one neuron to every later head: weight edges (from the bases when they hold
  them, else from the weights), data edges over the neuron's active images (paper 2's top-k: from the bases
  when they were built on the same image set, else selected here in two passes), each head's TextSpan texts
  and the neuron's sparse terms (from the bases), and on request the path ablation (lens vs real model).
- `head_circuit`: the earlier-layer neurons that feed one head most, with their sparse terms.

Targets: "pc" (the neuron's first PC r_n: from the bases, else computed with the selection), "class:NAME" (a
zero-shot class direction, 80 OpenAI templates), or any other text (its unit embedding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from core.circuits.ablation import PathAblation, ablate_paths, token_means
from core.circuits.edges import (DataEdges, InEdges, WeightEdges, data_edges, head_in_edges, select_active,
                                 weight_edges)
from core.engine.labels import head_label, neuron_label
from core.errors import BasesError, ConfigError, TextError, check_index
from core.neurons.second_order import COEFFICIENT, check_layer
from core.neurons.stats import DEFAULT_K, check_k

PC = "pc"
CLASS_PREFIX = "class:"
HEAD_TEXTS = 3  # TextSpan texts shown per head
NEURON_TERMS = 6  # sparse terms shown per neuron
ABLATION_IMAGES = 16  # a neuron's top active images the path ablation runs on
MEAN_IMAGES = 256  # the first images of the set give the per-token mean activations of mean ablation
MAX_TARGET_CHARS = 200
Progress = Callable[..., Iterable]


@dataclass(frozen=True)
class PathRow:
    """One path n -> (later layer, head)."""

    layer: int
    head: int
    composition: float
    weight: float | None  # <u, t>
    data: float | None  # mean data edge over the active images
    share: float | None  # data / sum |data|
    head_texts: tuple[str, ...]

    @property
    def name(self) -> str:
        return head_label(self.layer, self.head)

    @property
    def sign(self) -> str:
        value = self.data if self.data is not None else self.weight
        if value is None or value == 0:
            return ""
        return "excitatory" if value > 0 else "inhibitory"


@dataclass(frozen=True)
class NeuronCircuit:
    model: str
    device: str
    layer: int
    neuron: int
    target: str | None
    mode: str
    weight: WeightEdges
    data: DataEdges | None
    rows: list[PathRow]  # strongest first
    terms: list[tuple[str, float]]  # the neuron's sparse terms (empty without bases)
    provenance: dict[str, Any]
    ablation: PathAblation | None = None

    def matrix(self, kind: str) -> torch.Tensor:
        """[later, head]: the edges to draw: "data" (mean data edges), "weight" (signed against the target when
        there is one, else the composition score)."""
        if kind == "data":
            if self.data is None:
                raise ConfigError("no data edges: give an image set")
            return self.data.mean[0]
        return self.weight.signed[0] if self.weight.signed is not None else self.weight.composition[0]

    def as_dict(self) -> dict:
        out = {"model": self.model, "device": self.device, "component": neuron_label(self.layer, self.neuron),
               "layer": self.layer, "neuron": self.neuron, "target": self.target, "convention": self.mode,
               "coefficient": COEFFICIENT, "terms": [{"text": t, "weight": w} for t, w in self.terms],
               "paths": [{"head": r.name, "layer": r.layer, "index": r.head, "composition": r.composition,
                          "weight_edge": r.weight, "data_edge": r.data, "share": r.share, "sign": r.sign,
                          "head_texts": list(r.head_texts)} for r in self.rows],
               "provenance": self.provenance}
        if self.data is not None:
            out["data_total"] = float(self.data.total[0])
            out["active_images"] = int(self.data.count[0])
        if self.ablation is not None:
            a = self.ablation
            out["ablation"] = {"images": a.n_images, "lens_all_paths": a.lens_all, "real_all_paths": a.real_all,
                               "real_whole_neuron": a.neuron_real, "share_explained": a.share_explained,
                               "paths": [{"head": head_label(l2, h), "lens": float(a.lens[i, h]),
                                          "real": float(a.real[i, h])}
                                         for i, l2 in enumerate(a.later_layers) for h in range(a.lens.shape[1])]}
        return out


# ---------------------------------------------------------------- what the bases hold

def neuron_basis_or_none(artifact, layer: int, info=None):
    """The artifact's neuron basis of `layer`, or None when it has no neuron statistics for it."""
    if artifact is None or not artifact.manifest["algorithms"].get("neurons"):
        return None
    from core.neurons.bases import load_neuron_basis, neuron_layers

    return load_neuron_basis(artifact, layer, info) if layer in neuron_layers(artifact) else None


def head_text_map(artifact, n: int = HEAD_TEXTS) -> dict[tuple[int, int], tuple[str, ...]]:
    """Every head's first TextSpan texts in the artifact, from one read of its table (empty without)."""
    from core.heads.bases import TABLE

    if artifact is None or not artifact.has(TABLE):
        return {}
    grouped: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for row in artifact.table(TABLE):
        grouped.setdefault((int(row["layer"]), int(row["head"])), []).append((int(row["order"]), str(row["text"])))
    return {head: tuple(text for _, text in sorted(rows)[:n]) for head, rows in grouped.items()}


def head_texts(artifact, head: tuple[int, int], n: int = HEAD_TEXTS) -> tuple[str, ...]:
    """The head's first TextSpan texts in the artifact (empty without)."""
    return head_text_map(artifact, n).get(tuple(head), ())


def _same_images(basis, image_set) -> bool:
    return basis is not None and image_set is not None and basis.image_set.fingerprint() == image_set.fingerprint()


# ---------------------------------------------------------------- targets

def check_target(value: str | None) -> str | None:
    """A --target value: None (the PC when there is one), "pc", "class:NAME" or a text of one line."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_TARGET_CHARS or "\n" in value or "\x00" in value:
        raise TextError(f"the target must be 'pc', class:NAME or a text of 1 to {MAX_TARGET_CHARS} characters on one "
                        "line")
    if value.startswith(CLASS_PREFIX) and not value[len(CLASS_PREFIX):].strip():
        raise TextError("class:NAME needs a class name")
    return value


def text_target(bundle, value: str) -> tuple[torch.Tensor, str]:
    """([1, d_out] unit direction, words) of a class or a text target."""
    from core.engine.text import encode_texts, imagenet_classifier_texts, zero_shot_classifier

    if value.startswith(CLASS_PREFIX):
        name = value[len(CLASS_PREFIX):].strip()
        return (zero_shot_classifier(bundle, [name], imagenet_classifier_texts()[1]).float().cpu(),
                f"class '{name}' (80 OpenAI templates)")
    return encode_texts(bundle, [value]).float().cpu(), f"text '{value}'"


# ---------------------------------------------------------------- one neuron's out-edges

def neuron_circuit(bundle, layer: int, neuron: int, *, image_set=None, target: str | None = None, artifact=None,
                   k: int | None = None, mode: str = "paper", batch_size: int = 32, ablation: bool = False,
                   mean_images: int = MEAN_IMAGES, ablation_images: int = ABLATION_IMAGES,
                   progress: Progress | None = None, bases_source: str | None = None) -> NeuronCircuit:
    """The paths of `neuron` of MLP `layer` to every later head (see the module docstring).

    image_set None: weight edges only. k: active images per neuron (default: the bases' k, else 100).
    """
    visual = bundle.model.visual
    check_layer(visual, layer)
    check_index("neuron", neuron, bundle.info.d_mlp)
    target = check_target(target)
    if ablation and image_set is None:
        raise ConfigError("the path ablation runs on images: give an image set")
    basis = neuron_basis_or_none(artifact, layer, bundle.info)
    provenance: dict[str, Any] = {"bases": bases_source, "images": image_set.description if image_set else None}
    active = None
    if image_set is not None:
        if _same_images(basis, image_set) and (k is None or k <= basis.stats.k):
            k = basis.stats.k if k is None else k
            ids, pc = basis.stats.top_images[neuron, :k], basis.stats.pcs[neuron]
            provenance["active"] = f"the neuron's top {k} images by |phi - mean| (from the bases)"
        else:
            k = DEFAULT_K if k is None else k
            check_k(k, image_set.count)
            batches = lambda: image_set.batches(bundle.preprocess, batch_size, [])  # noqa: E731
            selected = select_active(visual, layer, batches, neurons=[neuron], k=k, mode=mode, progress=progress,
                                     total=image_set.n_batches(batch_size))
            ids, pc = selected.ids[0], selected.pcs[0]
            provenance["active"] = f"the neuron's top {k} of {selected.n_images} images by |phi - mean| (selected here)"
        active = ids
    # the target direction
    if target is None or target == PC:
        if basis is not None:
            direction, words = basis.stats.pcs[neuron][None].float(), "r_n, the neuron's first PC (bases)"
        elif active is not None:
            direction, words = pc[None].float(), "r_n, the neuron's first PC (computed on this image set)"
        elif target == PC:
            raise BasesError(f"--target pc needs the neuron's first PC: neuron bases with layer {layer}, or an image "
                             "set to compute it on; or give --target TEXT")
        else:
            direction, words = None, None
    else:
        direction, words = text_target(bundle, target)
    weights = _stored_weight_edges(artifact, layer, neuron, direction, words) if target in (None, PC) else None
    if weights is None:
        weights = weight_edges(visual, layer, neurons=[neuron], targets=direction, target=words)
        provenance["weights"] = "computed from the model's weights"
    else:
        provenance["weights"] = "stored in the bases"
    data = None
    if active is not None:
        ids = [int(i) for i in active.tolist()]
        pixels = _batches(bundle, image_set, ids, batch_size)
        data = data_edges(visual, layer, pixels, direction, neurons=[neuron], active=active[None], target=words,
                          mode=mode, progress=progress, total=-(-len(ids) // batch_size))
    result = None
    if ablation:
        means = token_means(visual, layer, image_set.slice(0, min(mean_images, image_set.count)).batches(
            bundle.preprocess, batch_size, []), neurons=[neuron])[:, 0]
        chosen = [int(i) for i in active[:ablation_images].tolist()]
        pixels = torch.cat([p for _, p in _batches(bundle, image_set, chosen, batch_size)])
        result = ablate_paths(visual, pixels.to(bundle.device), layer, neuron, means.to(bundle.device),
                              direction[0].to(bundle.device), mode=mode)
        provenance["ablation"] = (f"mean ablation (per-token means over the first {min(mean_images, image_set.count)} "
                                  f"images of the set) on the neuron's top {len(chosen)} images")
    rows = _rows(weights, data, artifact)
    terms = basis.words.terms(neuron, basis.texts)[:NEURON_TERMS] if basis is not None else []
    if basis is not None:
        provenance["terms"] = (f"sparse terms of r_n over text pool {basis.provenance['text_pool']} "
                               f"({basis.provenance['dictionary']})")
    return NeuronCircuit(bundle.info.spec, str(bundle.device), layer, neuron, words, mode, weights, data, rows, terms,
                         provenance, result)


def _batches(bundle, image_set, ids: list[int], batch_size: int):
    """(ids, pixels) batches of some images of the set, in the given order."""
    for start in range(0, len(ids), batch_size):
        part = ids[start:start + batch_size]
        yield torch.tensor(part), torch.stack([bundle.preprocess(image_set.image(i)) for i in part])


def _stored_weight_edges(artifact, layer: int, neuron: int, direction, words) -> WeightEdges | None:
    if artifact is None:
        return None
    from core.circuits.bases import load_weight_edges

    stored = load_weight_edges(artifact, layer)
    if stored is None:
        return None
    signed = stored.signed[neuron:neuron + 1] if direction is not None and stored.signed is not None else None
    return WeightEdges(layer, stored.later_layers, (neuron,), stored.composition[neuron:neuron + 1], signed,
                       words if signed is not None else None)


def _rows(weights: WeightEdges, data: DataEdges | None, artifact) -> list[PathRow]:
    n_heads = weights.composition.shape[2]
    texts = head_text_map(artifact)
    rows = []
    share = data.share()[0] if data is not None else None
    for i, l2 in enumerate(weights.later_layers):
        for h in range(n_heads):
            rows.append(PathRow(l2, h, float(weights.composition[0, i, h]),
                                None if weights.signed is None else float(weights.signed[0, i, h]),
                                None if data is None else float(data.mean[0, i, h]),
                                None if share is None else float(share[i, h]), texts.get((l2, h), ())))

    def strength(row: PathRow) -> float:
        for value in (row.data, row.weight, row.composition):
            if value is not None:
                return abs(value)
        return 0.0

    return sorted(rows, key=lambda row: (-round(strength(row), 12), row.layer, row.head))


# ---------------------------------------------------------------- one head's in-edges

@dataclass(frozen=True)
class InRow:
    layer: int
    neuron: int
    composition: float
    signed: float | None
    terms: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class HeadCircuit:
    model: str
    device: str
    head: tuple[int, int]
    target: str | None
    rows: list[InRow]
    head_texts: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "component": head_label(*self.head),
                "head_texts": list(self.head_texts), "target": self.target, "provenance": self.provenance,
                "in_edges": [{"neuron": neuron_label(r.layer, r.neuron), "layer": r.layer, "index": r.neuron,
                              "composition": r.composition, "weight_edge": r.signed,
                              "terms": [{"text": t, "weight": w} for t, w in r.terms]} for r in self.rows]}


def head_circuit(bundle, head: tuple[int, int], *, target: str | None = None, artifact=None,
                 layers: list[int] | None = None, top: int = 20, bases_source: str | None = None) -> HeadCircuit:
    """The `top` neurons of earlier MLP layers (default: the bases' neuron layers before the head, else all)
    with the strongest weight edges into `head`: signed against the target (each neuron's own r_n for "pc")
    when one is available, else by composition score."""
    l2, h = head
    check_index("layer", l2, bundle.info.n_layers)
    check_index("head", h, bundle.info.n_heads)
    if l2 == 0:
        raise ConfigError("heads of layer 0 read no MLP neuron (every MLP comes after them): choose a later head")
    target = check_target(target)
    bases_layers = []
    if artifact is not None and artifact.manifest["algorithms"].get("neurons"):
        from core.neurons.bases import neuron_layers

        bases_layers = [layer for layer in neuron_layers(artifact) if layer < l2]
    layers = sorted(set(layers)) if layers else (bases_layers or list(range(l2)))
    for layer in layers:
        check_index("layer", layer, l2)
    bases = {layer: neuron_basis_or_none(artifact, layer, bundle.info) for layer in layers}
    targets, words = None, None
    if target is not None and target != PC:
        direction, words = text_target(bundle, target)
        targets = {layer: direction for layer in layers}
    elif all(bases[layer] is not None for layer in layers):
        targets = {layer: bases[layer].stats.pcs.float() for layer in layers}
        words = "each neuron's own r_n (bases)"
    elif target == PC:
        missing = [layer for layer in layers if bases[layer] is None]
        raise BasesError(f"--target pc needs neuron bases for layer(s) {missing}; give --target TEXT or bases")
    edges: InEdges = head_in_edges(bundle.model.visual, (l2, h), layers, targets=targets, target=words)
    rows = []
    for layer, neuron, _ in edges.ranked(top):
        basis = bases[layer]
        terms = tuple(basis.words.terms(neuron, basis.texts)[:NEURON_TERMS]) if basis is not None else ()
        rows.append(InRow(layer, neuron, float(edges.composition[layer][neuron]),
                          float(edges.signed[layer][neuron]) if edges.signed else None, terms))
    provenance = {"bases": bases_source, "layers": layers,
                  "ranked_by": "|weight edge| against the target" if edges.signed else "composition score"}
    return HeadCircuit(bundle.info.spec, str(bundle.device), (l2, h), words, rows, head_texts(artifact, (l2, h)),
                       provenance)
