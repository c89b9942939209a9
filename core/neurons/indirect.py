"""Indirect effects of MLP neurons (paper 2, table 1): mean-ablate a neuron's activation and re-run the model.

The indirect effect of neuron n of MLP `layer` on image I is what the embedding loses when its post-activation
p_{i,n} is replaced at every token i by its mean over a reference set, mu_{i,n}, and every later layer is re-run
(attention patterns, later MLPs and LayerNorm statistics all change with it, unlike the second-order lens):

    e_n(I) = coefficient / |y(I)| * (y(I) - y(I | p_n := mu_n))                                   [d_out]

in the units of the second-order effects (x100, divided by the unperturbed embedding norm).

- `activation_means`: mu [token, d_mlp] over reference batches.
- `ablated_embeddings`: y with every neuron of the layer mean-ablated at once (table 1's "indirect" row): a
  forward pre-hook on the layer's c_proj replaces its input by mu; nothing else of the model changes.
- `indirect_effects`: e_n for a chunk of neurons per image, from one forward to the layer and a batched re-run
  of the later blocks (one row per neuron), never a full forward per neuron.
- `indirect_stats`: per neuron, the mean, the top-k images by |e_n - mean| and the first PC of those deviations
  with its share of their energy (the same protocol as `core.neurons.stats` for the second-order effects).

Class-token pooling with ln_post on the class token, as `core.engine.trace` (the models it supports).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from core.engine.trace import check_supported, layer_norm_stats
from core.errors import ConfigError, DatasetError, check_index
from core.neurons.stats import DEFAULT_K, TopDeviations, check_k, first_principal_components

COEFFICIENT = 100.0
DEFAULT_CHUNK = 256  # neurons re-run together per image


def _check_layer(visual: nn.Module, layer: int) -> int:
    check_supported(visual)
    n_layers = len(visual.transformer.resblocks)
    check_index("layer", layer, n_layers)
    if layer >= n_layers - 1:
        raise ConfigError(f"layer {layer} is the last: its neurons reach the embedding directly, with no later layer "
                          "to re-run; choose a layer before the last")
    return layer


def _embedding_from_residual(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[batch, d_out] from the final residual stream [batch, token, d_model] (class token, ln_post, proj)."""
    resid = x[:, 0]
    mean, std = layer_norm_stats(resid, visual.ln_post.eps)
    pooled = (resid - mean[:, None]) / std[:, None] * visual.ln_post.weight + visual.ln_post.bias
    return pooled @ visual.proj if visual.proj is not None else pooled


def _run_blocks(blocks, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


@torch.inference_mode()
def _to_layer(visual: nn.Module, images: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual after block `layer` [batch, token, d_model], its MLP post-activations [batch, token, d_mlp])."""
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = visual._embeds(images.to(next(visual.parameters()).dtype))
    x = _run_blocks(blocks[:layer], x, batch_first)
    block = blocks[layer]
    attn_in = block.ln_1(x)
    if batch_first:
        attn_out = block.attention(q_x=attn_in)
    else:
        attn_out = block.attention(q_x=attn_in.transpose(0, 1)).transpose(0, 1)
    x = x + block.ls_1(attn_out)
    hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(x)))
    x = x + block.ls_2(block.mlp.c_proj(hidden))
    return x, hidden


@torch.inference_mode()
def activation_means(visual: nn.Module, layer: int, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mu [token, d_mlp] float32, images): the mean post-activation of every neuron at every token."""
    _check_layer(visual, layer)
    total, count = None, 0
    for pixels in batches:
        _, hidden = _to_layer(visual, pixels.to(next(visual.parameters()).device), layer)
        part = hidden.sum(0, dtype=torch.float64)
        total = part if total is None else total + part
        count += hidden.shape[0]
    if count == 0:
        raise DatasetError("no readable images to compute the neurons' mean activations from")
    return (total / count).float(), count


@torch.inference_mode()
def ablated_embeddings(visual: nn.Module, images: torch.Tensor, layer: int, means: torch.Tensor) -> torch.Tensor:
    """[batch, d_out]: the embedding with every neuron of `layer` replaced by its per-token mean (re-run)."""
    _check_layer(visual, layer)
    c_proj = visual.transformer.resblocks[layer].mlp.c_proj
    batch_first = getattr(visual.transformer, "batch_first", True)  # else the blocks see [token, batch, d_mlp]

    def replace(_module, inputs):
        hidden = inputs[0]
        fixed = means.to(hidden)
        return (fixed.expand_as(hidden) if batch_first else fixed[:, None].expand_as(hidden),)

    handle = c_proj.register_forward_pre_hook(replace)
    try:
        return visual(images.to(next(visual.parameters()).dtype))
    finally:
        handle.remove()


@torch.inference_mode()
def indirect_effects(visual: nn.Module, images: torch.Tensor, layer: int, means: torch.Tensor, *,
                     neurons: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK,
                     coefficient: float = COEFFICIENT) -> torch.Tensor:
    """[batch, neuron, d_out]: e_n(I) of every neuron (or the listed `neurons`) of `layer`; see the docstring."""
    _check_layer(visual, layer)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    x, hidden = _to_layer(visual, images.to(next(visual.parameters()).device), layer)
    y = _embedding_from_residual(visual, _run_blocks(blocks[layer + 1:], x, batch_first))
    block = blocks[layer]
    w_out = block.mlp.c_proj.weight  # [d_model, d_mlp]
    gamma = getattr(block.ls_2, "gamma", None)  # LayerScale, if any
    index = torch.arange(hidden.shape[-1], device=hidden.device) if neurons is None else neurons.to(hidden.device)
    out = torch.empty(len(images), len(index), y.shape[-1], dtype=y.dtype, device=y.device)
    means = means.to(hidden)
    for b in range(len(images)):
        for start in range(0, len(index), chunk):
            part = index[start:start + chunk]
            change = means[:, part] - hidden[b][:, part]  # [token, neuron]
            writes = change.T[:, :, None] * w_out[:, part].T[:, None, :]  # [neuron, token, d_model]
            if gamma is not None:
                writes = writes * gamma
            perturbed = _run_blocks(blocks[layer + 1:], x[b][None] + writes, batch_first)
            out[b, start:start + len(part)] = y[b] - _embedding_from_residual(visual, perturbed)
    return out * (coefficient / y.norm(dim=-1))[:, None, None]


@torch.inference_mode()
def indirect_stats(visual: nn.Module, layer: int, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                   means: torch.Tensor, *, k: int = DEFAULT_K, chunk: int = DEFAULT_CHUNK
                   ) -> dict[str, torch.Tensor | int]:
    """Two passes over `batches()` ((ids, pixels) batches, the same each call): the mean indirect effect per
    neuron, then the top-k deviations, their first PCs and the share of their energy along it."""
    total, count = None, 0
    for _, pixels in batches():
        effects = indirect_effects(visual, pixels, layer, means, chunk=chunk)
        part = effects.sum(0, dtype=torch.float64)
        total = part if total is None else total + part
        count += effects.shape[0]
    if count == 0:
        raise DatasetError("no readable images for the indirect effects")
    check_k(k, count)
    mean = (total / count).float()
    top = TopDeviations(mean.shape[0], k, mean.shape[1], dtype=torch.float32, device=mean.device)
    for ids, pixels in batches():
        deviations = indirect_effects(visual, pixels, layer, means, chunk=chunk) - mean
        top.update(torch.as_tensor(ids, dtype=torch.long), deviations, deviations.norm(dim=-1))
    pcs, share = first_principal_components(top.vectors, top.order())
    return {"mean": mean, "pcs": pcs, "pc_variance": share, "n_images": count}
