"""One traced forward pass over a stock open_clip VisionTransformer.

open_clip never materialises what the decompositions need (attention weights are fused away,
per-head outputs never exist), so we re-run the forward from the module's own weights and
sub-modules (`_embeds`, `ln_2`, `mlp`, `ls_1`, `ls_2`), recomputing only the LayerNorms and
the attention, and record:

- ln_1 statistics of every layer at every token (for the second-order lens),
- the class-token row of every attention pattern (the only query row the papers use),
- per-head attention-weighted values at the class token, and optionally all value vectors,
- MLP outputs at the class token and MLP post-activations of requested layers,
- ln_post statistics and the final embedding.

The traced embedding equals `visual(images)` (tested for every architecture in the tests).

>>> trace = trace_vit(bundle.model.visual, images, mlp_layers=[2], keep_values=True)
>>> trace.embedding.shape   # [batch, d_out]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError, ImageError, UnsupportedModelError, check_index


@dataclass(frozen=True)
class VitTrace:
    """What one traced forward recorded. Shapes use named dims; token 0 is the class token."""

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


def _attention(block: nn.Module, x_norm: torch.Tensor):
    """Per-head attention of one block. Returns (attn_out [batch, token, d_model] before LayerScale,
    attn_cls [batch, head, token], head_cls [batch, head, d_head], values [batch, token, head, d_head])."""
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = x_norm.shape
    heads = attn.num_heads
    qkv = F.linear(x_norm, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(batch, tokens, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v)  # [batch, head, token, d_head]
    d_head = q.shape[-1]
    attn_cls = torch.softmax((q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2) * d_head**-0.5, dim=-1)
    head_cls = torch.einsum("bht,bhtd->bhd", attn_cls, v)
    # The class-token row is recomputed from the recorded pattern so the decomposition sums exactly.
    out[:, :, 0] = head_cls
    merged = out.transpose(1, 2).reshape(batch, tokens, width)
    attn_out = F.linear(merged, attn.out_proj.weight, attn.out_proj.bias)
    return attn_out, attn_cls, head_cls, v.transpose(1, 2)


def _check_images(visual: nn.Module, images: torch.Tensor) -> None:
    expected = tuple(int(s) for s in visual.image_size)
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != expected:
        raise ImageError(
            f"expected a preprocessed image batch of shape [batch, 3, {expected[0]}, {expected[1]}], "
            f"got {list(images.shape)}; use the model's preprocess."
        )


@torch.inference_mode()
def _check_trace_arguments(visual: nn.Module, images: torch.Tensor, mlp_layers) -> None:
    check_supported(visual)
    _check_images(visual, images)
    for layer in mlp_layers:
        check_index("layer", layer, len(visual.transformer.resblocks))
    if visual.training:
        raise ConfigError("the vision tower is in training mode; call model.eval() first.")


def trace_vit(
    visual: nn.Module,
    images: torch.Tensor,
    *,
    mlp_layers: tuple[int, ...] | list[int] = (),
    keep_values: bool = False,
) -> VitTrace:
    """Run `visual` on preprocessed `images` [batch, 3, H, W] and record what decompositions need.

    mlp_layers: layers whose MLP post-activations [batch, token, d_mlp] to keep.
    keep_values: keep all value vectors [batch, layer, token, head, d_head] (spatial maps).
    """
    _check_trace_arguments(visual, images, mlp_layers)
    blocks = visual.transformer.resblocks
    dtype = next(visual.parameters()).dtype
    x = visual._embeds(images.to(dtype))
    cls_embed = x[:, 0].clone()
    ln1_mean, ln1_std, attn_cls, head_cls, value_cls, mlp_cls, values = [], [], [], [], [], [], []
    mlp_post: dict[int, torch.Tensor] = {}
    for index, block in enumerate(blocks):
        mean, std = layer_norm_stats(x, block.ln_1.eps)
        attn_out, pattern, head_out, value = _attention(block, _normalise(x, mean, std, block.ln_1))
        x = x + block.ls_1(attn_out)
        hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(x)))
        mlp_out = block.ls_2(block.mlp.c_proj(hidden))
        x = x + mlp_out
        ln1_mean.append(mean)
        ln1_std.append(std)
        attn_cls.append(pattern)
        head_cls.append(head_out)
        value_cls.append(value[:, 0])
        mlp_cls.append(mlp_out[:, 0])
        if keep_values:
            values.append(value)
        if index in mlp_layers:
            mlp_post[index] = hidden
    resid = x[:, 0]
    post_mean, post_std = layer_norm_stats(resid, visual.ln_post.eps)
    pooled = _normalise(resid, post_mean, post_std, visual.ln_post)
    embedding = pooled @ visual.proj if visual.proj is not None else pooled
    return VitTrace(
        embedding=embedding,
        cls_embed=cls_embed,
        ln1_mean=torch.stack(ln1_mean, 1),
        ln1_std=torch.stack(ln1_std, 1),
        attn_cls=torch.stack(attn_cls, 1),
        head_cls=torch.stack(head_cls, 1),
        value_cls=torch.stack(value_cls, 1),
        mlp_cls=torch.stack(mlp_cls, 1),
        resid_final=resid,
        ln_post_mean=post_mean,
        ln_post_std=post_std,
        values=torch.stack(values, 1) if keep_values else None,
        mlp_post=mlp_post,
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
