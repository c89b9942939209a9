"""One traced forward pass over a stock open_clip VisionTransformer.

open_clip never materialises what the decompositions need (attention weights are fused away,
per-head outputs never exist), so we re-run the forward from the module's own weights and
sub-modules (`_embeds`, `ln_2`, `mlp`, `ls_1`, `ls_2`), recomputing only the LayerNorms and
the attention, and record:

- ln_1 statistics of every layer at every token (for the second-order lens),
- the class-token row of every attention pattern (the only query row the papers use),
- per-head attention-weighted values at the class token, and optionally all value vectors
  (or, cheaper, every token's value mapped onto a few directions, layer by layer),
- MLP outputs at the class token and MLP post-activations of requested layers,
- ln_post statistics and the final embedding.

The traced embedding equals `visual(images)` (tested for every architecture in the tests).

Cost: about one forward. The LayerNorms are the fused kernel nn.LayerNorm runs (its statistics come
out of the same call); the outputs are preallocated and filled layer by layer; every record is a copy
of a slice, so each layer's qkv and MLP outputs are freed as in a plain forward; and the last block
runs at the class token only (the other tokens' outputs of the last block feed nothing).

>>> trace = trace_vit(bundle.model.visual, images, mlp_layers=[2], keep_values=True)
>>> trace.embedding.shape   # [batch, d_out]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError, ImageError, UnsupportedModelError, check_index
from core.lazy import lazy_module

open_clip = lazy_module("open_clip")  # it imports torchvision, transformers and timm: seconds, on first use


@dataclass(frozen=True)
class VitTrace:
    """What one traced forward recorded. Shapes use named dims; token 0 is the class token.

    Every tensor is the trace's own storage (no view into the forward's activations), so a trace holds
    only what it lists: O(batch x layer x token) numbers, plus the optional per-token tensors asked for.
    """

    embedding: torch.Tensor  # [batch, d_out] unnormalised image embedding, = visual(images)
    cls_embed: torch.Tensor  # [batch, d_model] ln_pre output at the class token (the embedding term)
    ln1_mean: torch.Tensor  # [batch, layer, token]
    ln1_std: torch.Tensor  # [batch, layer, token] sqrt(var + eps)
    attn_cls: torch.Tensor  # [batch, layer, head, token] softmax row of the class-token query
    head_cls: torch.Tensor  # [batch, layer, head, d_head] sum_i attn_cls[i] * value[i]
    value_cls: torch.Tensor  # [batch, layer, head, d_head] value vector of the class token itself
    mlp_cls: torch.Tensor  # [batch, layer, d_model] MLP output (after LayerScale) at the class token
    resid_final: torch.Tensor  # [batch, d_model] class-token residual before ln_post
    ln_post_mean: torch.Tensor  # [batch]
    ln_post_std: torch.Tensor  # [batch]
    values: torch.Tensor | None = None  # [batch, layer, token, head, d_head] when keep_values
    mlp_post: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [batch, token, d_mlp]
    # With value_maps [layer, head, d_head, D]: every token's value mapped per head, value_i^{l,h} @ maps[l, h],
    # recorded layer by layer so the values themselves are never kept (spatial maps onto a few directions).
    mapped_values: torch.Tensor | None = None  # [batch, layer, head, token, D]
    value_maps: torch.Tensor | None = None  # [layer, head, d_head, D] the maps mapped_values used

    @property
    def n_layers(self) -> int:
        return self.attn_cls.shape[1]


def check_supported(visual: nn.Module) -> None:
    """Raise UnsupportedModelError naming the first feature the traced forward does not model."""
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        kind = type(visual).__name__
        feature = {"ModifiedResNet": "a ResNet image tower", "TimmModel": "a timm image tower"}.get(kind, kind)
        raise UnsupportedModelError(
            f"this model has {feature}; the decomposition needs an open_clip VisionTransformer (ViT-*)."
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError("this ViT pools with an attentional pooler (CoCa-style); only class-token pooling is supported.")
    if visual.pool_type != "tok":
        raise UnsupportedModelError(f"this ViT uses '{visual.pool_type}' pooling; only class-token ('tok') pooling is supported.")
    for index, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, open_clip.transformer.ResidualAttentionBlock):
            raise UnsupportedModelError(
                f"block {index} is a {type(block).__name__} (qk-norm / scaled-cosine / custom attention), "
                "which the decomposition does not model."
            )
        if not isinstance(block.attn, nn.MultiheadAttention) or not block.attn._qkv_same_embed_dim:
            raise UnsupportedModelError(f"block {index} has a non-standard attention module.")
        if not isinstance(block.ln_1, nn.LayerNorm):
            raise UnsupportedModelError(f"block {index} uses {type(block.ln_1).__name__} instead of LayerNorm.")
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise UnsupportedModelError("the final norm is not a LayerNorm.")


def layer_norm_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sqrt(var + eps) over the last dim (biased variance, as nn.LayerNorm)."""
    mean = x.mean(-1)
    std = (x - mean.unsqueeze(-1)).pow(2).mean(-1).add(eps).sqrt()
    return mean, std


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    out = (x - mean.unsqueeze(-1)) / std.unsqueeze(-1)
    if ln.weight is not None:
        out = out * ln.weight
    if ln.bias is not None:
        out = out + ln.bias
    return out


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised x, mean, 1 / sqrt(var + eps)) over the last dim: one fused kernel, the one nn.LayerNorm runs
    (F.layer_norm keeps only the first output). mean and rstd are [..., 1]."""
    return torch.native_layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _check_images(visual: nn.Module, images: torch.Tensor) -> None:
    expected = tuple(int(s) for s in visual.image_size)
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != expected:
        raise ImageError(
            f"expected a preprocessed image batch of shape [batch, 3, {expected[0]}, {expected[1]}], "
            f"got {list(images.shape)}; use the model's preprocess."
        )


@torch.inference_mode()
def _check_trace_arguments(visual: nn.Module, images: torch.Tensor, mlp_layers, value_maps) -> None:
    check_supported(visual)
    _check_images(visual, images)
    for layer in mlp_layers:
        check_index("layer", layer, len(visual.transformer.resblocks))
    if visual.training:
        raise ConfigError("the vision tower is in training mode; call model.eval() first.")
    if value_maps is not None:
        blocks = visual.transformer.resblocks
        heads, width = blocks[0].attn.num_heads, blocks[0].attn.embed_dim
        expected = (len(blocks), heads, width // heads)
        if value_maps.ndim != 4 or tuple(value_maps.shape[:3]) != expected:
            raise ConfigError(f"value_maps must be [layer, head, d_head, D] = [{', '.join(map(str, expected))}, D], "
                              f"got {list(value_maps.shape)}")


class _Recorder:
    """The trace's preallocated outputs, filled layer by layer (no per-layer lists, no final stacks)."""

    def __init__(self, x: torch.Tensor, n_layers: int, heads: int, keep_values: bool, value_maps):
        batch, tokens, width = x.shape
        d_head = width // heads
        new = x.new_empty
        self.ln1_mean, self.ln1_std = new(batch, n_layers, tokens), new(batch, n_layers, tokens)
        self.attn_cls = new(batch, n_layers, heads, tokens)
        self.head_cls, self.value_cls = new(batch, n_layers, heads, d_head), new(batch, n_layers, heads, d_head)
        self.mlp_cls = new(batch, n_layers, width)
        self.values = new(batch, n_layers, tokens, heads, d_head) if keep_values else None
        self.value_maps = None if value_maps is None else value_maps.to(x.device, x.dtype)
        self.mapped_values = None if value_maps is None else new(batch, n_layers, heads, tokens, value_maps.shape[-1])

    def values_of(self, layer: int, value: torch.Tensor) -> None:
        """value [batch, token, head, d_head] (a view into the layer's qkv): keep only what was asked for."""
        self.value_cls[:, layer] = value[:, 0]
        if self.values is not None:
            self.values[:, layer] = value
        if self.mapped_values is not None:
            batch, tokens, heads, d_head = value.shape
            # [head, batch * token, d_head] @ [head, d_head, D]: a strided view of qkv, no copy of the values
            mapped = torch.matmul(value.permute(2, 0, 1, 3).reshape(heads, batch * tokens, d_head), self.value_maps[layer])
            self.mapped_values[:, layer] = mapped.view(heads, batch, tokens, -1).transpose(0, 1)


def _class_row(q_cls: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, record: _Recorder) -> torch.Tensor:
    """The class-token query's softmax row and its output, from one computation.

    q_cls [batch, head, d_head]; k, v [batch, token, head, d_head] (views into qkv). Records attn_cls and
    head_cls and returns head_cls [batch, head, d_head]: the same softmax gives the recorded pattern and the
    class token's output, so the decomposition sums exactly to the traced forward.
    """
    scores = (k * (q_cls * q_cls.shape[-1] ** -0.5)[:, None]).sum(-1)  # [batch, token, head]
    probs = torch.softmax(scores, dim=1)
    record.attn_cls[:, layer] = probs.transpose(1, 2)
    head_cls = (probs[..., None] * v).sum(1)  # [batch, head, d_head]
    record.head_cls[:, layer] = head_cls
    return head_cls


def _attention(block: nn.Module, x_norm: torch.Tensor, layer: int, record: _Recorder) -> torch.Tensor:
    """attn_out [batch, token, d_model] (before LayerScale) of one block; records its class row and values."""
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = x_norm.shape
    heads = attn.num_heads
    qkv = F.linear(x_norm, attn.in_proj_weight, attn.in_proj_bias).view(batch, tokens, 3, heads, width // heads)
    q, k, v = qkv.unbind(2)  # [batch, token, head, d_head] views, no copies
    record.values_of(layer, v)
    head_cls = _class_row(q[:, 0], k, v, layer, record)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    merged = out.transpose(1, 2)  # [batch, token, head, d_head]; SDPA lays its output out this way (no copy)
    # The class row is our own (same softmax as the recorded pattern) so the decomposition sums exactly.
    merged[:, 0] = head_cls
    return F.linear(merged.reshape(batch, tokens, width), attn.out_proj.weight, attn.out_proj.bias)


def _last_block(block: nn.Module, x: torch.Tensor, x_norm: torch.Tensor, layer: int, record: _Recorder) -> torch.Tensor:
    """The last block at the class token only: [batch, d_model] residual after it.

    Nothing downstream reads the other tokens' outputs of the last block, so only their keys and values are
    computed: no query, attention, out-projection or MLP at the patch tokens (exactly the same class token)."""
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = x_norm.shape
    heads = attn.num_heads
    bias = attn.in_proj_bias
    kv = F.linear(x_norm, attn.in_proj_weight[width:], None if bias is None else bias[width:])
    k, v = kv.view(batch, tokens, 2, heads, width // heads).unbind(2)
    record.values_of(layer, v)
    q_cls = F.linear(x_norm[:, 0], attn.in_proj_weight[:width], None if bias is None else bias[:width])
    head_cls = _class_row(q_cls.view(batch, heads, -1), k, v, layer, record)
    resid = x[:, 0] + block.ls_1(F.linear(head_cls.reshape(batch, width), attn.out_proj.weight, attn.out_proj.bias))
    mlp_out = block.ls_2(block.mlp(block.ln_2(resid)))
    record.mlp_cls[:, layer] = mlp_out
    return resid + mlp_out


def trace_vit(
    visual: nn.Module,
    images: torch.Tensor,
    *,
    mlp_layers: tuple[int, ...] | list[int] = (),
    keep_values: bool = False,
    value_maps: torch.Tensor | None = None,
) -> VitTrace:
    """Run `visual` on preprocessed `images` [batch, 3, H, W] and record what decompositions need.

    mlp_layers: layers whose MLP post-activations [batch, token, d_mlp] to keep.
    keep_values: keep all value vectors [batch, layer, token, head, d_head] (spatial maps onto any directions).
    value_maps: [layer, head, d_head, D]; record each token's value through them, `mapped_values`
      [batch, layer, head, token, D], layer by layer (spatial maps onto D known directions: the values
      are never kept). See `core.engine.contributions.spatial_value_maps`.
    Memory: about one forward's activations, plus what is asked for; the last block runs at the class token
    only (unless its MLP activations are asked for).
    """
    _check_trace_arguments(visual, images, mlp_layers, value_maps)
    with torch.inference_mode():
        return _trace(visual, images, frozenset(mlp_layers), keep_values, value_maps)


def _trace(visual: nn.Module, images: torch.Tensor, mlp_layers: frozenset, keep_values: bool, value_maps) -> VitTrace:
    blocks = visual.transformer.resblocks
    last = len(blocks) - 1
    dtype = next(visual.parameters()).dtype
    x = visual._embeds(images.to(dtype))
    cls_embed = x[:, 0].clone()
    record = _Recorder(x, len(blocks), blocks[0].attn.num_heads, keep_values, value_maps)
    mlp_post: dict[int, torch.Tensor] = {}
    for index, block in enumerate(blocks):
        x_norm, mean, rstd = _layer_norm(x, block.ln_1)
        record.ln1_mean[:, index] = mean[..., 0]
        torch.reciprocal(rstd[..., 0], out=record.ln1_std[:, index])
        if index == last and index not in mlp_layers:
            resid = _last_block(block, x, x_norm, index, record)
            break
        attn_out = block.ls_1(_attention(block, x_norm, index, record))
        del x_norm
        x += attn_out  # in place: x is this function's own (the output of _embeds; cls_embed is a copy)
        del attn_out
        hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(x)))
        mlp_out = block.ls_2(block.mlp.c_proj(hidden))
        if index in mlp_layers:
            mlp_post[index] = hidden
        del hidden
        record.mlp_cls[:, index] = mlp_out[:, 0]
        x += mlp_out
        del mlp_out
    else:  # the last block ran at every token (its MLP activations were asked for)
        resid = x[:, 0].clone()
    pooled, post_mean, post_rstd = _layer_norm(resid, visual.ln_post)
    embedding = pooled @ visual.proj if visual.proj is not None else pooled
    return VitTrace(
        embedding=embedding,
        cls_embed=cls_embed,
        ln1_mean=record.ln1_mean,
        ln1_std=record.ln1_std,
        attn_cls=record.attn_cls,
        head_cls=record.head_cls,
        value_cls=record.value_cls,
        mlp_cls=record.mlp_cls,
        resid_final=resid,
        ln_post_mean=post_mean[..., 0],
        ln_post_std=post_rstd[..., 0].reciprocal(),
        values=record.values,
        mlp_post=mlp_post,
        mapped_values=record.mapped_values,
        value_maps=record.value_maps,
    )


def attention_forward(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The forward of `visual` with every attention pattern written out in full, differentiably.

    Returns (embedding [batch, d_out], patterns: one [batch, head, token(query), token(key)] softmax
    per layer). The embedding equals `visual(images)`; every later computation reads the returned
    patterns, so `torch.autograd.grad(score, patterns)` gives d score / d A (Chefer et al., GradCAM).
    Not under inference mode: the caller chooses `torch.no_grad()` (rollout) or grad mode. Costs the
    full [token x token] patterns; the decompositions use `trace_vit`, which never builds them.
    """
    check_supported(visual)
    _check_images(visual, images)
    if visual.training:
        raise ConfigError("the vision tower is in training mode; call model.eval() first.")
    dtype = next(visual.parameters()).dtype
    x = visual._embeds(images.to(dtype))
    patterns = []
    for block in visual.transformer.resblocks:
        attn: nn.MultiheadAttention = block.attn
        batch, tokens, width = x.shape
        heads = attn.num_heads
        mean, std = layer_norm_stats(x, block.ln_1.eps)
        qkv = F.linear(_normalise(x, mean, std, block.ln_1), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = (t.reshape(batch, tokens, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        pattern = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [batch, head, query, key]
        merged = (pattern @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + block.ls_1(F.linear(merged, attn.out_proj.weight, attn.out_proj.bias))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        patterns.append(pattern)
    resid = x[:, 0]
    post_mean, post_std = layer_norm_stats(resid, visual.ln_post.eps)
    pooled = _normalise(resid, post_mean, post_std, visual.ln_post)
    embedding = pooled @ visual.proj if visual.proj is not None else pooled
    return embedding, patterns
