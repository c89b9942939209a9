"""Weight edges stored in a bases artifact (core.artifacts.store), so that a view of a neuron's circuit needs no
computation: `python -m core bases build ... --circuits`.

Per neuron layer L of the build:

    tensors/circuits_L{L}   composition [neuron, later, head]  Elhage-style composition score of n -> l'h
                            pc          [neuron, later, head]  <u_n^{l'h}, r_n>, signed against the neuron's PC

Every neuron's edges to every later head are kept (they are small: ViT-B-32, 3 layers: 1.5 MB), so the top
ones of any neuron are read at once. The manifest's `algorithms["circuits"]` records the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from core.artifacts.store import Artifact, ArtifactWriter
from core.circuits.edges import WeightEdges, weight_edges
from core.errors import BasesError

ALGORITHM = "circuits"
_SHAPES = {"composition": ("neuron", "later", "head"), "pc": ("neuron", "later", "head")}


def group_name(layer: int) -> str:
    return f"circuits_L{layer}"


def circuit_build_params(layers: list[int]) -> dict:
    """What a build with circuit edges records in its manifest."""
    return {"layers": list(layers), "edges": ["composition", "pc"], "store_dtype": "float32"}


def write_circuit_group(writer: ArtifactWriter, visual: nn.Module, layer: int, pcs: torch.Tensor) -> None:
    """Compute and write one layer's weight edges (pcs [neuron, d_out]: the layer's r_n)."""
    if writer.has(group_name(layer)):
        return
    edges = weight_edges(visual, layer, targets=pcs.to(next(visual.parameters()).device), target="r_n")
    writer.add_tensors(group_name(layer), {"composition": edges.composition.float().cpu().contiguous(),
                                           "pc": edges.signed.float().cpu().contiguous()})


def circuit_layers(artifact: Artifact) -> list[int]:
    """Layers with stored weight edges ([] when the build had no --circuits)."""
    params = artifact.manifest["algorithms"].get(ALGORITHM)
    if not params:
        return []
    layers = params.get("layers") if isinstance(params, dict) else None
    if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise BasesError(f"the bases at {artifact.path} record circuit layers {layers!r}, not a list of integers")
    return layers


def load_weight_edges(artifact: Artifact, layer: int) -> WeightEdges | None:
    """The stored weight edges of `layer` (signed against r_n), or None when the artifact has none for it."""
    if layer not in circuit_layers(artifact) or not artifact.has(group_name(layer)):
        return None
    stored = artifact.tensors(group_name(layer), _SHAPES)
    n_neurons, n_later, _ = stored["composition"].shape
    model = artifact.manifest["model"]
    return WeightEdges(layer, tuple(range(layer + 1, layer + 1 + n_later)), tuple(range(n_neurons)),
                       stored["composition"].float(), stored["pc"].float(), f"r_n (bases of {model['spec']})")
