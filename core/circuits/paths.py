"""Per-path parts of a neuron's second-order effect: which later head carries how much of it.

Neuron n of MLP layer l writes p_{i,n} w_n at every token i. Its second-order effect (core.neurons.second_order)
is a sum over the paths (l', h), l' > l, through the values of head h of each later layer l':

    phi_n(I) = sum_{l', h} part_n^{l'h}(I)                                                        [d_out]
    part_n^{l'h}(I) = c(I) s_n^{l'h}(I) u_n^{l'h} + c(I) b^{l'h}(I)

    c(I)            = coefficient / |y(I)|                                 (x100 and the real |y|, as paper 2)
    s_n^{l'h}(I)    = sum_i alpha^{l'h}_{0i}(I) p_{i,n}(I) / (sigma^{l'}_i(I) sigma_post(I))   one scalar per image
    u_n^{l'h}       = (ls_1 W_O^h W_V^h (gamma_1^{l'} * w_n)) diag(gamma_post) P              weights only
    b^{l'h}(I)      = the path's share of every bias and LayerNorm mean ("paper" mode; 0 in "linear" mode)

sigma^{l'}_i, the attention rows alpha and sigma_post are frozen at the image's own forward pass, as paper 2
freezes them, so the split is exact: summed over (l', h) the parts are `second_order_effects` in both of the
project's conventions (tests: relative error <= 1e-5). How "paper" mode shares its biases out over the paths:
path (l', h) gets what passes through head h of layer l', i.e. the c_proj-bias, ln_1-mean, ln_1-bias and
value-bias shares through its values, b_O / (k1 H) of the out-projection bias and 1/k2 of the ln_post mean and
bias shares (k1 = (1 + 2 l') N, k2 = k1 (1 + 2 L) H, the papers' constants: `path_shared_terms`). b^{l'h} is the
same for every neuron, so it never ranks one path of a neuron above another by the neuron's own doing; it is
kept so that the parts add up to what the Neurons tab shows. Unlike the usual write-up (w_n centred first), u has no
centring projection: the project's "linear" convention has none (the ln_1 mean is shared out in "paper" mode).

Memory: u for a whole layer is [neuron, later, head, d_out] (ViT-B-16 layer 0: 830 MB), so nothing here builds it
for more than a chunk of neurons. `PathWeights` keeps the d_head-wide factor W_V^h (gamma_1 * w_n) instead
(ViT-B-16 layer 0, all neurons: 104 MB) and projects it on targets through head_out = (ls_1 W_O^h) diag(gamma_post) P.

>>> weights = path_weights(visual, layer=1, neurons=[5])
>>> terms = path_terms(trace_vit(visual, pixels, mlp_layers=[1]), bias_paths(visual, 1), neurons=[5])
>>> path_parts(terms, weights).sum((2, 3))      # [batch, neuron, d_out] == second_order_effects(...)[:, [5]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.engine.contributions import fold_weights
from core.engine.trace import VitTrace
from core.errors import ConfigError, check_index
from core.neurons.second_order import (COEFFICIENT, MODES, BiasPaths, bias_paths, check_layer, mlp_output_weights,
                                       path_shared_terms, path_values, second_order_scalars)

__all__ = ["PathWeights", "PathTerms", "path_weights", "path_terms", "path_parts", "path_edges", "own_edges",
           "neuron_list", "later_layers", "bias_paths", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 256  # neurons per chunk: ViT-B-16 layer 0 holds 256 x 132 x 64 floats (8.6 MB) of values at once


def neuron_list(neurons, d_mlp: int) -> list[int]:
    """Neuron indices as a checked list (all of the layer when None)."""
    if neurons is None:
        return list(range(d_mlp))
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    if not neurons:
        raise ConfigError("no neurons given")
    for neuron in neurons:
        check_index("neuron", neuron, d_mlp)
    return neurons


@dataclass(frozen=True)
class PathWeights:
    """The image-independent factors of the paths of some neurons of one MLP layer."""

    layer: int
    later_layers: tuple[int, ...]
    neurons: tuple[int, ...]
    values: torch.Tensor  # [neuron, later, head, d_head]  W_V^h (gamma_1^{l'} * w_n)
    head_out: torch.Tensor  # [later, head, d_head, d_out]  (ls_1 W_O^h) diag(gamma_post) P
    write_norms: torch.Tensor  # [neuron]  |w_n| (c_proj column, LayerScale folded)

    @property
    def n_heads(self) -> int:
        return self.values.shape[2]

    def directions(self) -> torch.Tensor:
        """[neuron, later, head, d_out]: u_n^{l'h} (memory: use on chunks of neurons)."""
        return torch.einsum("nlhd,lhdo->nlho", self.values, self.head_out)

    def project(self, targets: torch.Tensor) -> torch.Tensor:
        """[neuron, later, head, target]: <u_n^{l'h}, t> for targets [target, d_out] shared by every neuron."""
        through = torch.einsum("lhdo,to->lhdt", self.head_out, targets.to(self.head_out))
        return torch.einsum("nlhd,lhdt->nlht", self.values, through)

    def project_own(self, targets: torch.Tensor) -> torch.Tensor:
        """[neuron, later, head]: <u_n^{l'h}, t_n> for one target per neuron, targets [neuron, d_out] (e.g. r_n)."""
        if targets.shape[0] != self.values.shape[0]:
            raise ConfigError(f"{targets.shape[0]} targets for {self.values.shape[0]} neurons")
        through = torch.einsum("lhdo,no->nlhd", self.head_out, targets.to(self.head_out))
        return (self.values * through).sum(-1)

    def norms(self) -> torch.Tensor:
        """[neuron, later, head]: |u_n^{l'h}|, from the [d_head, d_head] Gram matrix of each head's output map."""
        gram = self.head_out @ self.head_out.transpose(-1, -2)  # [later, head, d_head, d_head]
        squared = torch.einsum("nlhd,lhde,nlhe->nlh", self.values, gram, self.values)
        return squared.clamp(min=0).sqrt()


def later_layers(n_layers: int, layer: int, later=None) -> tuple[int, ...]:
    """The later layers a path set goes through: all after `layer` (default) or the listed ones, checked."""
    if later is None:
        return tuple(range(layer + 1, n_layers))
    later = tuple(sorted(set(int(index) for index in later)))
    bad = [index for index in later if not layer < index < n_layers]
    if bad or not later:
        raise ConfigError(f"later layers {list(bad or later)} are not after MLP layer {layer} "
                          f"(choose among {layer + 1}..{n_layers - 1})")
    return later


@torch.no_grad()
def path_weights(visual: nn.Module, layer: int, neurons=None, later=None) -> PathWeights:
    """The factors of `neurons` (default: all; chunk them for a large layer) of MLP `layer`, through every
    later layer (or the `later` ones)."""
    check_layer(visual, layer)
    w, _ = mlp_output_weights(visual.transformer.resblocks[layer])
    chosen = neuron_list(neurons, w.shape[1])
    later = later_layers(len(visual.transformer.resblocks), layer, later)
    return PathWeights(layer, later, tuple(chosen), path_values(visual, layer, chosen, list(later)),
                       fold_weights(visual).head_out[list(later)], w[:, chosen].norm(dim=0))


@dataclass(frozen=True)
class PathTerms:
    """The image-dependent factors of the paths, for a batch of images.

    scalars already hold c(I) = coefficient / |y|; shared is c(I) b^{l'h}(I), None in "linear" mode.
    """

    layer: int
    later_layers: tuple[int, ...]
    neurons: tuple[int, ...]
    scalars: torch.Tensor  # [batch, neuron, later, head]  c(I) s_n^{l'h}(I)
    shared: torch.Tensor | None  # [batch, later, head, d_out]  c(I) b^{l'h}(I)
    mode: str
    coefficient: float


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


@torch.inference_mode()
def path_terms(trace: VitTrace, bias: BiasPaths, *, neurons=None, later=None, mode: str = "paper",
               coefficient: float = COEFFICIENT) -> PathTerms:
    """The per-image factors of MLP `bias.layer`'s paths from a trace made with mlp_layers=[layer].

    bias: `bias_paths(visual, layer)` (or a SecondOrderBasis). neurons: default all (cheap: batch x neuron x
    later x head floats). later: some later layers only (default all).
    """
    _check_mode(mode)
    chosen = neuron_list(neurons, bias.d_mlp)
    later = later_layers(bias.n_layers, bias.layer, later)
    rows = [bias.later_layers.index(index) for index in later]
    scalars = second_order_scalars(trace, bias)[:, rows]  # [batch, later, head, neuron]
    scale = coefficient / trace.embedding.norm(dim=-1)  # [batch]
    scalars = scalars[..., chosen].permute(0, 3, 1, 2) * (scale / trace.ln_post_std)[:, None, None, None]
    shared = path_shared_terms(trace, bias)[:, rows] * scale[:, None, None, None] if mode == "paper" else None
    return PathTerms(bias.layer, later, tuple(chosen), scalars, shared, mode, coefficient)


def _check_same(terms: PathTerms, weights: PathWeights) -> None:
    if (terms.layer, terms.later_layers, terms.neurons) != (weights.layer, weights.later_layers, weights.neurons):
        raise ConfigError("the path terms and weights are for different layers, later layers or neurons")


def path_parts(terms: PathTerms, weights: PathWeights) -> torch.Tensor:
    """[batch, neuron, later, head, d_out]: every path's part of phi_n (memory: few neurons at a time)."""
    _check_same(terms, weights)
    parts = terms.scalars[..., None] * weights.directions()[None]
    return parts if terms.shared is None else parts + terms.shared[:, None]


def path_edges(terms: PathTerms, weights: PathWeights, targets: torch.Tensor) -> torch.Tensor:
    """[batch, neuron, later, head, target]: data edges <part_n^{l'h}(I), t> for targets [target, d_out].

    Summed over (later, head) they are <phi_n(I), t>.
    """
    _check_same(terms, weights)
    targets = targets.to(weights.head_out)
    edges = terms.scalars[..., None] * weights.project(targets)[None]
    if terms.shared is not None:
        edges = edges + torch.einsum("blho,to->blht", terms.shared, targets)[:, None]
    return edges


def own_edges(terms: PathTerms, weights: PathWeights, targets: torch.Tensor,
              projected: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, neuron, later, head]: data edges against one target per neuron, targets [neuron, d_out].

    projected: `weights.project_own(targets)` when already computed (it depends on the weights only).
    """
    _check_same(terms, weights)
    targets = targets.to(weights.head_out)
    edges = terms.scalars * (weights.project_own(targets) if projected is None else projected)[None]
    if terms.shared is not None:
        edges = edges + torch.einsum("blho,no->bnlh", terms.shared, targets)
    return edges
