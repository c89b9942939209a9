"""Step 2: the neurons whose second-order effect points along v, ranked by |<v, r_n>| over the bases.

r_n is neuron n's first principal component (its typical second-order direction, unit norm), read
from the model's neuron bases (`core.neurons.bases`). Default layers: the last three the bases cover.
Ties in |<v, r_n>| are broken by (layer, neuron), so the choice never depends on float noise in the order.

>>> bases = layer_bases(bundle)                      # {layer: NeuronBasis}
>>> chosen = top_neurons(direction.v, bases, n=100)
>>> chosen.rows()[:3]                                # [{"layer", "neuron", "projection"}, ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from core.adversarial.defaults import DEFAULT_LAST_LAYERS, DEFAULT_NEURONS
from core.engine.models import ClipBundle
from core.errors import BasesError, ConfigError
from core.neurons.bases import NeuronBasis, find_neuron_bases, load_neuron_basis, neuron_layers



@dataclass(frozen=True)
class NeuronSelection:
    """Chosen neurons as parallel tensors: layers [k], neurons [k], projections <v, r_n> [k]."""

    layers: torch.Tensor
    neurons: torch.Tensor
    projections: torch.Tensor
    how: str  # "top |<v, r_n>|" or "random (seed s)"
    pool_layers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def rows(self) -> list[dict]:
        return [{"layer": int(l), "neuron": int(n), "projection": float(p)}
                for l, n, p in zip(self.layers.tolist(), self.neurons.tolist(), self.projections.tolist())]


def layer_bases(bundle: ClipBundle, source: str | None = None,
                layers: Sequence[int] | None = None) -> dict[int, NeuronBasis]:
    """{layer: NeuronBasis} from the model's bases; default layers: the last DEFAULT_LAST_LAYERS they cover.

    Raises BasesError when no bases are configured, ConfigError naming the available layers when a
    requested layer is missing.
    """
    artifact = find_neuron_bases(bundle, source)
    available = neuron_layers(artifact)
    if layers is None or len(layers) == 0:
        chosen = available[-DEFAULT_LAST_LAYERS:]
    else:
        chosen = list(dict.fromkeys(int(layer) for layer in layers))
        missing = [layer for layer in chosen if layer not in available]
        if missing:
            raise ConfigError(f"the bases at {artifact.path} have neuron statistics for layer(s) "
                              f"{', '.join(map(str, available))}, not {', '.join(map(str, missing))}; choose among "
                              "those or build bases for more layers (python -m core bases build --neuron-layers ...)")
    bases = {layer: load_neuron_basis(artifact, layer) for layer in chosen}
    pools = {tuple(b.texts) for b in bases.values()}
    if len(pools) != 1:
        raise BasesError("the layers' text decompositions use different text pools; rebuild the bases")
    return bases


def quantise(values: torch.Tensor, resolution: float = 1e-6) -> torch.Tensor:
    """values rounded to `resolution` times their largest magnitude (float64), for noise-free ranking."""
    values = values.double()
    scale = float(values.abs().max()) if values.numel() else 0.0
    return torch.round(values / (scale * resolution)) if scale > 0 else values


def _pool(bases: dict[int, NeuronBasis]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layers [N], neurons [N], pcs [N, d_out]) of every neuron of the given layers, layers ascending."""
    if not bases:
        raise ConfigError("no layers to choose neurons from")
    layers, neurons, pcs = [], [], []
    for layer in sorted(bases):
        count = len(bases[layer].stats.pcs)
        layers.append(torch.full((count,), layer, dtype=torch.long))
        neurons.append(torch.arange(count))
        pcs.append(bases[layer].stats.pcs.float().cpu())
    return torch.cat(layers), torch.cat(neurons), torch.cat(pcs)


def _check_count(n: int, available: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of neurons must be a positive integer, got {n!r}")
    return min(n, available)


def top_neurons(v: torch.Tensor, bases: dict[int, NeuronBasis], n: int = DEFAULT_NEURONS) -> NeuronSelection:
    """The n neurons with the largest |<v, r_n>| among the layers of `bases` (ties: lower layer, neuron first)."""
    layers, neurons, pcs = _pool(bases)
    if v.shape != pcs.shape[1:]:
        raise ConfigError(f"v has shape {list(v.shape)}, the neuron PCs {list(pcs.shape[1:])}: embed the classes "
                          "with the model the bases belong to")
    projections = pcs @ v.float().cpu()
    n = _check_count(n, len(pcs))
    # Magnitudes rounded to 1e-6 of the largest, then a stable sort: values that differ only by float noise
    # (thread count, machine) tie, and ties keep (layer, neuron) order.
    order = torch.sort(-quantise(projections.abs()), stable=True).indices[:n]
    return NeuronSelection(layers[order], neurons[order], projections[order], "top |<v, r_n>|",
                           tuple(sorted(bases)))


def random_neurons(v: torch.Tensor, bases: dict[int, NeuronBasis], n: int = DEFAULT_NEURONS, *,
                   seed: int = 0) -> NeuronSelection:
    """n neurons drawn uniformly (seeded) from the same layers: the paper's random-neuron baseline."""
    layers, neurons, pcs = _pool(bases)
    n = _check_count(n, len(pcs))
    order = torch.randperm(len(pcs), generator=torch.Generator().manual_seed(int(seed)))[:n]
    projections = pcs[order] @ v.float().cpu()
    return NeuronSelection(layers[order], neurons[order], projections, f"random (seed {seed})", tuple(sorted(bases)))
