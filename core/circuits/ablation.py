"""Path ablation: mean-ablate some of a neuron's paths, in the second-order lens and in the real model.

The intervention (the same in both): in the values of head h of later layer l', the neuron's activation
p_{i,n}(I) is replaced at every token by its per-token mean pbar_{i,n} over an image set (mean ablation, as
paper 2's indirect-effect hook does for a whole neuron; zero ablation would overstate the dependence). Queries,
keys and every other head read the unchanged residual.

- **lens** (exact under frozen LayerNorm): the second-order part of the path changes by
  c(I) (s~ - s) u with s~ the scalar of the mean activations, so the effect on m(I) = <y(I), t> c(I) is
  c(I) (s - s~) <u, t> per path, and sums over ablated paths (`lens_path_effects`).
- **real**: a re-run of the stock open_clip model with forward hooks (`real_path_effects`): the hook at block l'
  recomputes ln_1 on the residual with the neuron's write replaced (real statistics, not frozen) and adds the
  change of the ablated heads' outputs at every token; everything downstream (later attention patterns, MLPs,
  ln_post) runs for real. The effect is m_clean(I) - m_ablated(I), with m = coefficient <y, t> / |y_clean|.
- **whole neuron** (`real_neuron_effect`): the activation replaced in the residual itself, so that the direct
  path, the QK paths and later MLPs change too (paper 2's indirect effect): the real effect the lens explains
  part of.
- **attribution patching** (`attribution_scores`, as ViT-Prisma's edge attribution patching): per path, the
  gradient of m with respect to the head's value input times the activation change, (p - pbar) w_n . dm/dx,
  one forward and one backward pass for all paths of a neuron.

Costs: a real re-run is one forward pass per image and path set; sets are batched together
(`max_rows` images per forward).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.circuits.paths import path_terms, path_weights
from core.engine.trace import check_supported, trace_vit
from core.errors import ConfigError, DatasetError, check_index
from core.neurons.second_order import COEFFICIENT, bias_paths, check_layer, mlp_output_weights

MAX_ROWS = 256  # images per hooked forward when several path sets are stacked


@torch.inference_mode()
def token_means(visual: nn.Module, layer: int, batches: Iterable, *, neurons=None) -> torch.Tensor:
    """[token, neuron]: per-token mean post-activation of MLP `layer` over (ids, pixels) batches (float64 sums)."""
    check_layer(visual, layer)
    device = next(visual.parameters()).device
    total, count = None, 0
    for _, pixels in batches:
        post = trace_vit(visual, pixels.to(device), mlp_layers=[layer]).mlp_post[layer]
        post = post if neurons is None else post[..., list(neurons)]
        part = post.sum(0, dtype=torch.float64)
        total = part if total is None else total + part
        count += post.shape[0]
    if count == 0:
        raise DatasetError("no readable images to take the mean activations over")
    return (total / count).float()


def _check(visual: nn.Module, layer: int, neuron: int, means: torch.Tensor, target: torch.Tensor) -> None:
    check_supported(visual)
    check_layer(visual, layer)
    check_index("neuron", neuron, mlp_output_weights(visual.transformer.resblocks[layer])[0].shape[1])
    if means.ndim != 1:
        raise ConfigError(f"the mean activations must be [token] for one neuron, got {list(means.shape)}")
    if target.ndim != 1:
        raise ConfigError(f"the target must be one [d_out] direction, got {list(target.shape)}")


def metric(embedding: torch.Tensor, target: torch.Tensor, norms: torch.Tensor, coefficient: float) -> torch.Tensor:
    """[batch]: m = coefficient <y, t> / |y_clean| (the units of the second-order effects)."""
    return coefficient * (embedding @ target.to(embedding)) / norms


# ---------------------------------------------------------------- the lens (frozen LayerNorm)

@torch.inference_mode()
def lens_path_effects(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                      target: torch.Tensor, *, mode: str = "paper", coefficient: float = COEFFICIENT) -> torch.Tensor:
    """[batch, later, head]: m_clean - m_ablated of each path on its own, exact under frozen LayerNorm.

    Additive over paths (the lens is linear in the activations), and the same in both conventions (the bias
    shares do not depend on the activation).
    """
    _check(visual, layer, neuron, means, target)
    trace = trace_vit(visual, pixels, mlp_layers=[layer])
    bias = bias_paths(visual, layer)
    post = trace.mlp_post[layer].clone()
    post[..., neuron] = means.to(post)
    ablated = replace(trace, mlp_post={layer: post})
    clean_terms = path_terms(trace, bias, neurons=[neuron], mode=mode, coefficient=coefficient)
    mean_terms = path_terms(ablated, bias, neurons=[neuron], mode=mode, coefficient=coefficient)
    projected = path_weights(visual, layer, [neuron]).project(target[None])[0, ..., 0]  # [later, head]
    return (clean_terms.scalars - mean_terms.scalars)[:, 0] * projected


# ---------------------------------------------------------------- the real model, hooked

class _Hooks:
    """Forward hooks on a stock open_clip VisionTransformer for one neuron of MLP `layer`.

    mode "paths": add, at each later block, the change of the ablated heads' outputs (rows x heads mask);
    mode "neuron": replace the activation in the residual; mode "gradient": add per-head perturbations z of the
    value inputs (zero, requiring grad) so that dm/dz is each path's gradient.
    """

    def __init__(self, visual: nn.Module, layer: int, neuron: int, means: torch.Tensor, kind: str,
                 masks: torch.Tensor | None = None):
        self.visual, self.layer, self.neuron, self.kind = visual, layer, neuron, kind
        self.blocks = visual.transformer.resblocks
        self.means = means
        self.masks = masks  # [rows, later, head] bool
        w, _ = mlp_output_weights(self.blocks[layer])
        self.write = w[:, neuron]  # [d_model]
        self.post: torch.Tensor | None = None  # [batch, token, d_mlp] of the current forward
        self.inputs: dict[int, torch.Tensor] = {}
        self.perturbations: dict[int, torch.Tensor] = {}
        self.handles = []

    def __enter__(self):
        gelu = self.blocks[self.layer].mlp.gelu
        self.handles.append(gelu.register_forward_hook(self._on_activation))
        if self.kind != "neuron":
            for index in range(self.layer + 1, len(self.blocks)):
                if self.kind == "paths" and not bool(self.masks[:, index - self.layer - 1].any()):
                    continue
                block = self.blocks[index]
                self.handles.append(block.register_forward_pre_hook(self._keep_input(index)))
                self.handles.append(block.attn.register_forward_hook(self._on_attention(index)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _on_activation(self, module, args, output):
        self.post = output
        if self.kind == "neuron":
            output = output.clone()
            output[..., self.neuron] = self.means.to(output)
            return output
        return None

    def _keep_input(self, index: int):
        def hook(module, args):
            self.inputs[index] = args[0]
        return hook

    def _on_attention(self, index: int):
        def hook(module, args, output):
            return (output[0] + self._head_change(index, args[0]),) + tuple(output[1:])
        return hook

    def _head_change(self, index: int, x_norm: torch.Tensor) -> torch.Tensor:
        """[batch, token, d_model]: the change of the attention output (before LayerScale) at block `index`."""
        block = self.blocks[index]
        attn: nn.MultiheadAttention = block.attn
        batch, tokens, width = x_norm.shape
        heads = attn.num_heads
        d_head = width // heads
        q, k, _ = F.linear(x_norm, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q = q.reshape(batch, tokens, heads, d_head).transpose(1, 2)
        k = k.reshape(batch, tokens, heads, d_head).transpose(1, 2)
        pattern = torch.softmax(q @ k.transpose(-1, -2) * d_head**-0.5, dim=-1)  # [batch, head, query, key]
        x = self.inputs.pop(index)
        if self.kind == "gradient":
            z = torch.zeros(batch, heads, tokens, width, dtype=x.dtype, device=x.device, requires_grad=True)
            self.perturbations[index] = z
            change = block.ln_1(x[:, None] + z) - x_norm[:, None]  # [batch, head, token, d_model]
            values = torch.einsum("bhtm,hdm->bhtd", change, _value_weight(attn, heads))
        else:
            delta = (self.means.to(x)[None] - self.post[..., self.neuron])[..., None] * self.write.to(x)
            change = block.ln_1(x + delta) - x_norm  # real ln_1 statistics of the changed residual
            values = torch.einsum("btm,hdm->bhtd", change, _value_weight(attn, heads))
            mask = self.masks[:, index - self.layer - 1].to(values)  # [rows, head]
            values = values * mask[:, :, None, None]
        mixed = pattern @ values  # [batch, head, query, d_head]
        out_weight = attn.out_proj.weight.reshape(width, heads, d_head)
        return torch.einsum("bhtd,mhd->btm", mixed, out_weight)


def _value_weight(attn: nn.MultiheadAttention, heads: int) -> torch.Tensor:
    width = attn.embed_dim
    return attn.in_proj_weight[2 * width:].reshape(heads, width // heads, width)


def _clean(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return visual(pixels)


@torch.inference_mode()
def real_path_effects(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                      masks: torch.Tensor, target: torch.Tensor, *, coefficient: float = COEFFICIENT,
                      max_rows: int = MAX_ROWS) -> torch.Tensor:
    """[set, batch]: m_clean - m_ablated when the paths of each set (masks [set, later, head], bool) are
    mean-ablated together in a hooked re-run of the real model."""
    _check(visual, layer, neuron, means, target)
    n_later = len(visual.transformer.resblocks) - layer - 1
    if masks.ndim != 3 or masks.shape[1] != n_later:
        raise ConfigError(f"masks must be [set, {n_later} later layers, head], got {list(masks.shape)}")
    clean = _clean(visual, pixels)
    norms = clean.norm(dim=-1)
    m_clean = metric(clean, target, norms, coefficient)
    batch = pixels.shape[0]
    per_forward = max(1, max_rows // batch)
    effects = []
    for start in range(0, masks.shape[0], per_forward):
        chunk = masks[start:start + per_forward].bool()
        rows = chunk.repeat_interleave(batch, 0)  # [set * batch, later, head]
        with _Hooks(visual, layer, neuron, means, "paths", rows):
            out = visual(pixels.repeat(len(chunk), 1, 1, 1))
        m = metric(out, target, norms.repeat(len(chunk)), coefficient).reshape(len(chunk), batch)
        effects.append(m_clean[None] - m)
    return torch.cat(effects)


@torch.inference_mode()
def real_neuron_effect(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                       target: torch.Tensor, *, coefficient: float = COEFFICIENT) -> torch.Tensor:
    """[batch]: m_clean - m_ablated when the neuron's activation is mean-ablated in the residual itself."""
    _check(visual, layer, neuron, means, target)
    clean = _clean(visual, pixels)
    norms = clean.norm(dim=-1)
    with _Hooks(visual, layer, neuron, means, "neuron"):
        out = visual(pixels)
    return metric(clean, target, norms, coefficient) - metric(out, target, norms, coefficient)


def attribution_scores(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                       target: torch.Tensor, *, coefficient: float = COEFFICIENT) -> torch.Tensor:
    """[batch, later, head]: attribution patching's estimate of each path's m_clean - m_ablated,
    (p - pbar) w_n . dm/dx_v (gradient at the clean input with respect to the head's value input)."""
    _check(visual, layer, neuron, means, target)
    norms = _clean(visual, pixels).norm(dim=-1)
    with torch.enable_grad():
        hooks = _Hooks(visual, layer, neuron, means, "gradient")
        with hooks:
            out = visual(pixels)
        total = metric(out, target.detach(), norms, coefficient).sum()
        later = sorted(hooks.perturbations)
        grads = torch.autograd.grad(total, [hooks.perturbations[index] for index in later])
    change = (hooks.post[..., neuron] - means.to(hooks.post)).detach()  # [batch, token]
    write = hooks.write.to(change)
    return torch.stack([torch.einsum("bt,m,bhtm->bh", change, write, grad) for grad in grads], 1)


# ---------------------------------------------------------------- one report

@dataclass(frozen=True)
class PathAblation:
    """Mean-ablation effects of one neuron's paths, averaged over images (units of m)."""

    layer: int
    neuron: int
    later_layers: tuple[int, ...]
    lens: torch.Tensor  # [later, head] each path alone, frozen LayerNorm (exact, additive)
    real: torch.Tensor  # [later, head] each path alone, hooked re-run
    lens_all: float  # all paths together, lens (= lens.sum())
    real_all: float  # all paths together, hooked re-run
    neuron_real: float  # the whole neuron mean-ablated in the residual (direct, OV, QK and MLP paths)
    n_images: int

    @property
    def share_explained(self) -> float:
        """lens_all / neuron_real: how much of the neuron's real effect the second-order lens accounts for."""
        return self.lens_all / self.neuron_real if self.neuron_real != 0 else float("nan")


def ablate_paths(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                 target: torch.Tensor, *, mode: str = "paper", coefficient: float = COEFFICIENT) -> PathAblation:
    """Each path alone and all together, in the lens and in the real model, and the whole neuron."""
    lens = lens_path_effects(visual, pixels, layer, neuron, means, target, mode=mode, coefficient=coefficient)
    n_later, n_heads = lens.shape[1:]
    singles = torch.eye(n_later * n_heads, dtype=torch.bool).reshape(-1, n_later, n_heads)
    masks = torch.cat([singles, torch.ones(1, n_later, n_heads, dtype=torch.bool)])
    real = real_path_effects(visual, pixels, layer, neuron, means, masks, target, coefficient=coefficient)
    whole = real_neuron_effect(visual, pixels, layer, neuron, means, target, coefficient=coefficient)
    lens_mean = lens.mean(0).cpu()
    return PathAblation(layer, neuron, tuple(range(layer + 1, layer + 1 + n_later)), lens_mean,
                        real[:-1].mean(1).reshape(n_later, n_heads).cpu(), float(lens_mean.sum()),
                        float(real[-1].mean()), float(whole.mean()), pixels.shape[0])
