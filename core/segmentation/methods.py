"""Zero-shot segmentation maps: per image and per class text, a score for every patch token.

Methods (each returns raw patch-grid scores [batch, text, G, G]; `core.segmentation.protocols` turns them
into [0, 1] maps at the input resolution):

- `heads` (paper 1): the image-token decomposition. Token i's direct contribution summed over all layers
  and heads (or a chosen head set), projected on the class text: sum_{l,h} <c~_{l,h,i}, t> / |y|, from
  the decomposition's fast path (`core.engine.contributions.direct_effects`), never from per-query
  [token x token] tensors. Class-mean subtraction projects on t - mean_c t_c (the map is linear in t).
- `neurons` (paper 2): per class, the top-k MLP neurons of the chosen layers by |<r_n, t>| (r_n: each
  neuron's first PC, from the neuron bases); the mean of their post-activation maps, optionally weighted
  by sign(<r_n, t>). `random-neurons`: k random neurons per class (seeded), the paper's baseline.
- `raw-attention`: last layer, class-token row, mean over heads.
- `rollout` (Abnar & Zuidema 2020): J = A^_{L-1} ... A^_s with A^ = (mean_h A + I) / rowsum; row 0.
  Starts at block 1 by default, as Chefer et al.'s evaluation script (0 is Abnar-faithful).
- `gradcam`: Chefer et al.'s attention GradCAM on the last block (heads as channels):
  ReLU(mean_h alpha_h A[h, 0, j]), alpha_h = mean_j d s / d A[h, 0, j], s = logit_scale * cos(image, t).
- `chefer` (Chefer et al. 2021, for CLIP): R = I; for blocks l >= start: R += mean_h ReLU(dA * A) R;
  row 0. Starts at the last block by default (their CLIP notebook since 2022); s as for GradCAM.

The class per image is given (indices into the texts) or predicted (argmax of cos(image, text)).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.engine.contributions import CONVENTIONS, direct_effects, fold_weights, spatial_value_maps
from core.engine.models import ClipBundle
from core.engine.shared_trace import shared_trace
from core.engine.trace import attention_forward
from core.errors import ConfigError, IndexRangeError, TextError, check_index
from core.messages import display_source
from core.segmentation.names import METHODS, TEXT_FREE  # noqa: F401  (re-exported)

MAX_TEXTS = 16
DEFAULT_TOP_K = 200


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def parse_heads(value: str | None, n_layers: int, n_heads: int) -> tuple[tuple[int, int], ...] | None:
    """'L.H,L.H,...' -> ((L, H), ...) sorted, checked against the model; None or 'all' -> None (every head)."""
    if value is None or value.strip() == "all":
        return None
    items = [item for item in value.replace(",", " ").split() if item]
    try:
        pairs = [(int(layer), int(head)) for layer, head in (item.split(".") for item in items)]
    except ValueError:
        raise ConfigError(f"heads must look like 10.3,11.0 (layer.head) or 'all', got {value[:60]!r}") from None
    if not pairs:
        raise ConfigError("no heads given; list them as layer.head, e.g. 10.3,11.0, or 'all'")
    return tuple(sorted({(check_index("layer", layer, n_layers), check_index("head", head, n_heads))
                         for layer, head in pairs}))


@dataclass(frozen=True)
class MethodOptions:
    """Settings of the methods; each method reads its own."""

    heads: tuple[tuple[int, int], ...] | None = None  # heads: the summed head set (None: all)
    convention: str = "paper"  # heads: how the final LayerNorm is shared (core.engine.contributions)
    neuron_layers: tuple[int, ...] | None = None  # neurons: candidate layers (None: every layer of the bases)
    top_k: int = DEFAULT_TOP_K  # neurons: neurons per class
    sign_weight: bool = False  # neurons: weight each map by sign(<r_n, t>)
    seed: int = 0  # random-neurons
    bases: str | None = None  # neurons: bases source (None: --bases default, $CLIPSCOPE_BASES, shipped)
    rollout_start: int = 1
    chefer_start: int = -1  # negative: counted from the end (-1 = last block only)

    def record(self, method: str) -> dict[str, Any]:
        """The options that change `method`'s maps (for provenance and resume keys)."""
        values = asdict(self)
        keys = {"heads": ("heads", "convention"), "neurons": ("neuron_layers", "top_k", "sign_weight", "bases"),
                "random-neurons": ("neuron_layers", "top_k", "sign_weight", "seed", "bases"),
                "rollout": ("rollout_start",), "chefer": ("chefer_start",)}.get(method, ())
        return {key: (list(map(list, values[key])) if key == "heads" and values[key] else values[key]) for key in keys}


@dataclass(frozen=True)
class Targets:
    """The texts a batch is segmented for.

    texts: [text, d_out] unit embeddings (class texts, or the user's texts); chosen: [batch, k] indices of
    the texts to map per image, or None for the predicted class (argmax of cos(image, text); k = 1);
    subtract_mean: heads only, project on t - mean over all texts (the papers' class-mean subtraction).
    """

    texts: torch.Tensor
    chosen: torch.Tensor | None = None
    subtract_mean: bool = False


@dataclass(frozen=True)
class MethodOutput:
    grids: torch.Tensor  # [batch, k, G, G] raw patch-grid scores
    chosen: torch.Tensor  # [batch, k] text indices mapped (given, or the prediction)
    predicted: torch.Tensor  # [batch] argmax of cos(image, text) over all texts


@dataclass
class NeuronPool:
    """Candidate neurons (layer, neuron) of the bases with their first PCs, concatenated over layers."""

    layers: tuple[int, ...]
    layer_of: torch.Tensor  # [candidate] long
    neuron_of: torch.Tensor  # [candidate] long
    pcs: torch.Tensor  # [candidate, d_out] float64
    source: str
    _selections: dict = field(default_factory=dict)

    def select(self, texts: torch.Tensor, top_k: int, *, random_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [text, k], signs [text, k]) of each text's neurons: by |<r_n, t>| descending, ties by
        candidate index; or k random candidates per text (seeded by (seed, text index))."""
        count = len(self.pcs)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= count:
            raise ConfigError(f"top-k must be an integer in 1..{count} (the neurons of layers "
                              f"{', '.join(map(str, self.layers))}), got {top_k!r}")
        key = (hashlib.sha256(texts.detach().cpu().float().numpy().tobytes()).hexdigest(), tuple(texts.shape), top_k,
               random_seed)
        if key not in self._selections:
            # float64 and rounding keep near-ties from depending on the machine; exact ties go to the lower index
            scores = (self.pcs @ texts.detach().cpu().double().T).T.numpy().round(10)  # [text, candidate]
            if random_seed is None:
                order = np.argsort(-np.abs(scores), axis=1, kind="stable")[:, :top_k]
            else:
                order = np.stack([np.sort(np.random.default_rng([random_seed, t]).choice(count, top_k, replace=False))
                                  for t in range(len(scores))])
            signs = np.sign(np.take_along_axis(scores, order, axis=1))
            if len(self._selections) > 8:
                self._selections.clear()
            self._selections[key] = (torch.from_numpy(order), torch.from_numpy(signs).float())
        return self._selections[key]


def neuron_pool(bundle: ClipBundle, layers: Sequence[int] | None = None, bases: str | None = None) -> NeuronPool:
    """The candidate neurons of `layers` (default: every layer of the bases) from the model's neuron bases."""
    from core.neurons.bases import find_neuron_bases, load_neuron_basis, neuron_layers

    artifact = find_neuron_bases(bundle, bases)
    available = neuron_layers(artifact)
    chosen = tuple(sorted(set(layers))) if layers else tuple(available)
    missing = [layer for layer in chosen if layer not in available]
    if missing:
        raise ConfigError(f"the neuron bases at {artifact.path} cover layer(s) {', '.join(map(str, available))}, "
                          f"not {', '.join(map(str, missing))}")
    pcs, layer_of, neuron_of = [], [], []
    for layer in chosen:
        basis_pcs = load_neuron_basis(artifact, layer, bundle.info).stats.pcs.double()
        pcs.append(basis_pcs)
        layer_of.append(torch.full((len(basis_pcs),), layer, dtype=torch.long))
        neuron_of.append(torch.arange(len(basis_pcs)))
    return NeuronPool(chosen, torch.cat(layer_of), torch.cat(neuron_of), torch.cat(pcs), str(artifact.path))


class Segmenter:
    """One method bound to one model: `segmenter(pixels, targets)` -> MethodOutput.

    Holds the head mask and, for the neuron methods, the candidate neurons; build one per
    (model, method, options) and reuse it over a dataset.
    """

    def __init__(self, bundle: ClipBundle, method: str, options: MethodOptions = MethodOptions(),
                 pool: NeuronPool | None = None):
        self.bundle, self.method, self.options = bundle, check_method(method), options
        info = bundle.info
        if options.convention not in CONVENTIONS:
            raise ConfigError(f"unknown convention {options.convention!r}; choose one of {', '.join(CONVENTIONS)}")
        self.head_mask = None
        if options.heads is not None:
            if not options.heads:
                raise ConfigError("the head set is empty; give LAYER.HEAD pairs or 'all'")
            self.head_mask = torch.zeros(info.n_layers, info.n_heads, dtype=torch.bool)
            for layer, head in options.heads:
                self.head_mask[check_index("layer", layer, info.n_layers), check_index("head", head, info.n_heads)] = True
        for name, start in (("rollout start", options.rollout_start), ("chefer start", options.chefer_start)):
            if not -info.n_layers <= start < info.n_layers:
                raise IndexRangeError(f"{name} {start} is out of range: this model has {info.n_layers} blocks "
                                      f"(0..{info.n_layers - 1}, or -1..-{info.n_layers} from the end)")
        # pool: candidate neurons given directly (e.g. a benchmark without bases); else read from the bases
        self.pool = pool if pool is not None or not method.endswith("neurons") else \
            neuron_pool(bundle, options.neuron_layers, options.bases)

    # ------------------------------------------------------------ public

    def describe(self) -> str:
        o = self.options
        if self.method == "heads":
            return (f"heads: token direct effects summed over {'all heads' if o.heads is None else f'heads {_heads_text(o.heads)}'}"
                    f", convention {o.convention}")
        if self.pool is not None:
            layers = ", ".join(map(str, self.pool.layers))
            chosen = (f"{o.top_k} random neurons per class (seed {o.seed})" if self.method == "random-neurons"
                      else f"the top {o.top_k} neurons per class by |<PC, text>|")
            return (f"{self.method}: {chosen} of layers {layers} (bases {display_source(self.pool.source)}), mean "
                    "activation map"
                    f"{', sign-weighted' if o.sign_weight else ''}")
        if self.method == "rollout":
            return f"rollout from block {o.rollout_start}, mean over heads, 0.5 A + 0.5 I"
        if self.method == "chefer":
            return f"Chefer et al. 2021 relevancy from block {o.chefer_start}, target logit_scale * cos"
        if self.method == "gradcam":
            return "attention GradCAM on the last block, target logit_scale * cos"
        return "raw attention: last block, class-token row, mean over heads"

    def __call__(self, pixels: torch.Tensor, targets: Targets) -> MethodOutput:
        texts = F.normalize(targets.texts.float(), dim=-1).to(self.bundle.device)
        if texts.ndim != 2 or texts.shape[1] != self.bundle.info.d_out or len(texts) == 0:
            raise TextError(f"expected text embeddings [text, {self.bundle.info.d_out}], got {list(targets.texts.shape)}")
        pixels = pixels.to(self.bundle.device)
        if targets.chosen is not None and (targets.chosen.ndim != 2 or len(targets.chosen) != len(pixels)):
            raise ConfigError(f"chosen texts must be [batch, k] for a batch of {len(pixels)}, got {list(targets.chosen.shape)}")
        run = {"heads": self._heads, "neurons": self._neurons, "random-neurons": self._neurons,
               "raw-attention": self._raw_attention, "rollout": self._rollout, "gradcam": self._gradients,
               "chefer": self._gradients}[self.method]
        return run(pixels, texts, targets)

    # ------------------------------------------------------------ helpers

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, k, token - 1] patch scores -> [batch, k, G, G]."""
        return tokens.reshape(*tokens.shape[:2], *self.bundle.info.grid).float().cpu()

    @staticmethod
    def _choose(embedding: torch.Tensor, texts: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = (F.normalize(embedding.float(), dim=-1) @ texts.T).argmax(-1)
        chosen = predicted[:, None] if targets.chosen is None else targets.chosen.to(predicted.device)
        if chosen.numel() and (chosen.min() < 0 or chosen.max() >= len(texts)):
            raise IndexRangeError(f"chosen text indices must lie in 0..{len(texts) - 1}")
        return chosen, predicted

    def _output(self, grids: torch.Tensor, chosen: torch.Tensor, predicted: torch.Tensor) -> MethodOutput:
        return MethodOutput(grids, chosen.cpu(), predicted.cpu())

    # ------------------------------------------------------------ methods

    def _heads(self, pixels, texts, targets):
        visual = self.bundle.model.visual
        folded = fold_weights(visual)
        if targets.chosen is not None:
            # The texts are known before the forward: each layer's values are mapped onto them as it runs (about one
            # forward's memory), never kept.
            used = torch.unique(targets.chosen.to(texts.device))
            directions = texts[used] - texts.mean(0) if targets.subtract_mean else texts[used]
            trace = shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, directions))
            chosen, predicted = self._choose(trace.embedding, texts, targets)
            columns = torch.searchsorted(used, chosen)  # [batch, k] columns of `directions`
        else:  # the predicted text is known only after the forward: keep the values
            trace = shared_trace(visual, pixels, keep_values=True)
            chosen, predicted = self._choose(trace.embedding, texts, targets)
            directions = texts[chosen].reshape(-1, texts.shape[-1])  # [batch * k, d_out]: every image's own texts
            if targets.subtract_mean:
                directions = directions - texts.mean(0)
            columns = torch.arange(directions.shape[0], device=texts.device).reshape(chosen.shape)
        with torch.inference_mode():
            # Every image's directions go through one call; each image then keeps its own columns.
            effects = direct_effects(trace, folded, convention=self.options.convention, spatial=True,
                                     directions=directions).scores()
            tokens = effects.tokens  # [batch, layer, head, token, direction]
            if self.head_mask is not None:
                tokens = tokens * self.head_mask.to(tokens.device)[None, :, :, None, None]
            summed = tokens.sum((1, 2))  # [batch, token, direction]
            own = torch.gather(summed, 2, columns[:, None, :].expand(-1, summed.shape[1], -1))  # [batch, token, k]
        return self._output(self._grid(own[:, 1:].transpose(1, 2)), chosen, predicted)

    def _neurons(self, pixels, texts, targets):
        pool, options = self.pool, self.options
        trace = shared_trace(self.bundle.model.visual, pixels, mlp_layers=list(pool.layers))
        chosen, predicted = self._choose(trace.embedding, texts, targets)
        seed = options.seed if self.method == "random-neurons" else None
        order, signs = pool.select(texts, options.top_k, random_seed=seed)
        # activations of every candidate at every patch token: [batch, token - 1, candidate]
        posts = torch.cat([trace.mlp_post[layer][:, 1:] for layer in pool.layers], -1).float()
        index = order[chosen.cpu()].to(posts.device)  # [batch, k, top_k]
        weights = (signs[chosen.cpu()] if options.sign_weight else torch.ones(index.shape)).to(posts.device)
        gathered = torch.gather(posts[:, None].expand(-1, index.shape[1], -1, -1), 3,
                                index[:, :, None, :].expand(-1, -1, posts.shape[1], -1))  # [batch, k, token - 1, top_k]
        maps = (gathered * weights[:, :, None, :]).mean(-1)
        return self._output(self._grid(maps), chosen, predicted)

    def _raw_attention(self, pixels, texts, targets):
        trace = shared_trace(self.bundle.model.visual, pixels)
        chosen, predicted = self._choose(trace.embedding, texts, targets)
        row = trace.attn_cls[:, -1, :, 1:].mean(1)  # [batch, token - 1]
        return self._output(self._grid(row[:, None].expand(-1, chosen.shape[1], -1)), chosen, predicted)

    def _rollout(self, pixels, texts, targets):
        with torch.no_grad():
            embedding, patterns = attention_forward(self.bundle.model.visual, pixels)
            chosen, predicted = self._choose(embedding, texts, targets)
            start = self.options.rollout_start % len(patterns)
            eye = torch.eye(patterns[0].shape[-1], device=pixels.device)
            joint = None
            for pattern in patterns[start:]:
                fused = pattern.mean(1) + eye
                fused = fused / fused.sum(-1, keepdim=True)
                joint = fused if joint is None else fused @ joint
            row = joint[:, 0, 1:]
        return self._output(self._grid(row[:, None].expand(-1, chosen.shape[1], -1)), chosen, predicted)

    def _gradients(self, pixels, texts, targets):
        model = self.bundle.model
        scale = model.logit_scale.exp().detach().float() if hasattr(model, "logit_scale") else torch.tensor(100.0)
        with torch.enable_grad():
            pixels = pixels.detach().clone().requires_grad_(True)  # puts every pattern on the autograd graph
            embedding, patterns = attention_forward(model.visual, pixels)
            chosen, predicted = self._choose(embedding.detach(), texts, targets)
            cosine = F.normalize(embedding.float(), dim=-1)
            start = -1 if self.method == "gradcam" else self.options.chefer_start % len(patterns)
            used = patterns[start:]
            maps = []
            for column in range(chosen.shape[1]):
                score = (scale * (cosine * texts[chosen[:, column]]).sum(-1)).sum()  # images are independent
                grads = torch.autograd.grad(score, used, retain_graph=column + 1 < chosen.shape[1])
                maps.append(self._gradcam(used[-1].detach(), grads[-1]) if self.method == "gradcam"
                            else self._relevancy([p.detach() for p in used], grads))
        return self._output(self._grid(torch.stack(maps, 1)), chosen, predicted)

    @staticmethod
    def _gradcam(pattern: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        rows, grad_rows = pattern[:, :, 0, 1:], grad[:, :, 0, 1:]  # [batch, head, token - 1]
        alpha = grad_rows.mean(-1, keepdim=True)
        return (alpha * rows).mean(1).clamp(min=0)

    @staticmethod
    def _relevancy(patterns: list[torch.Tensor], grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens = patterns[0].shape[-1]
        relevance = torch.eye(tokens, device=patterns[0].device).expand(len(patterns[0]), -1, -1)
        for pattern, grad in zip(patterns, grads):
            cam = (grad * pattern).clamp(min=0).mean(1)  # [batch, token, token]
            relevance = relevance + cam @ relevance
        return relevance[:, 0, 1:]


def _heads_text(heads: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{layer}.{head}" for layer, head in heads)
