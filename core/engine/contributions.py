"""Direct effects: the image embedding as an exact sum of embedding, MLP and attention terms.

With the final LayerNorm's statistics (mean mu, std s) frozen, the unnormalised embedding
    y = [gamma * (x - mu) / s + beta] P,   x = e0 + sum_l m_l + sum_{l,h,i} a_{l,h,i}
splits into one vector per component c:

    convention "paper" (the papers' code, the default): mu and beta are split in equal shares w
        c~ = [gamma * (c - w mu) / s + w beta] P
      w = 1/K for e0 and every MLP, w = 1/(K T H) for every (layer, head, token) cell, K = 2L + 1;
      an attention layer's out-proj bias is split evenly over its tokens x heads; the value bias
      follows the attention weights.
    convention "centered": each component is centred by its own mean (beta still split by w)
        c~ = [gamma * (c - mean(c)) / s + w beta] P

Both sum to y exactly. Scores against a text t are <c~, t/|t|> / |y|, which sum over all
components to cos(y, t).

Everything is computed from a VitTrace and weights folded once per model:
M[l, h] = W_O[l, h] diag(gamma) P  ([d_head, d_out]). Projecting onto a few text directions
first (`directions=`) costs [batch, layer, head, token, text] memory and never builds
[batch, layer, head, token, d_out]. A spatial decomposition onto known directions needs no stored
values at all: trace with `value_maps=spatial_value_maps(folded, directions)` and the trace maps each
layer's values as it goes (about one forward's memory):

>>> maps = spatial_value_maps(folded, texts)
>>> effects = direct_effects(trace_vit(visual, images, value_maps=maps), folded, spatial=True, directions=texts)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ConfigError
from core.engine.conventions import CONVENTIONS
from core.engine.trace import VitTrace


@dataclass(frozen=True)
class FoldedWeights:
    """Image-independent weights of one vision tower, with ln_post, proj and LayerScale folded in."""

    head_out: torch.Tensor  # [layer, head, d_head, d_out]  W_O diag(gamma) P
    head_out_mean: torch.Tensor  # [layer, head, d_head]  W_O averaged over d_model (for "centered")
    out_bias: torch.Tensor  # [layer, d_out]  b_O diag(gamma) P
    out_bias_mean: torch.Tensor  # [layer]
    gamma_proj: torch.Tensor  # [d_model, d_out]  diag(gamma) P
    ones_proj: torch.Tensor  # [d_out]  1^T diag(gamma) P
    beta_proj: torch.Tensor  # [d_out]  beta P
    w_out: torch.Tensor  # [layer, head, d_head, d_model]  per-head out-projection (LayerScale folded)
    b_out: torch.Tensor  # [layer, d_model]


def _layer_scale(module: nn.Module, width: int, like: torch.Tensor) -> torch.Tensor:
    gamma = getattr(module, "gamma", None)
    return gamma.detach() if gamma is not None else torch.ones(width, dtype=like.dtype, device=like.device)


_FOLD_CACHE: dict[tuple, FoldedWeights] = {}


def fold_weights(visual: nn.Module) -> FoldedWeights:
    """Fold ln_post, proj and LayerScale into per-head output maps (cached per weight version)."""
    params = tuple(visual.parameters())
    key = (id(visual),) + tuple((p.data_ptr(), p._version) for p in params)
    cached = _FOLD_CACHE.get(key)
    if cached is not None:
        return cached
    with torch.no_grad():
        folded = _fold(visual)
    if len(_FOLD_CACHE) > 8:
        _FOLD_CACHE.clear()
    _FOLD_CACHE[key] = folded
    return folded


def _fold(visual: nn.Module) -> FoldedWeights:
    ln = visual.ln_post
    width = ln.normalized_shape[0]
    proj = visual.proj if visual.proj is not None else torch.eye(width, dtype=ln.weight.dtype)
    gamma = ln.weight if ln.weight is not None else torch.ones(width)
    beta = ln.bias if ln.bias is not None else torch.zeros(width)
    gamma_proj = gamma[:, None] * proj
    w_out, b_out = [], []
    for block in visual.transformer.resblocks:
        heads = block.attn.num_heads
        scale = _layer_scale(block.ls_1, width, gamma)
        weight = block.attn.out_proj.weight * scale[:, None]  # [d_model(out), d_model(in)]
        w_out.append(weight.T.reshape(heads, width // heads, width))
        bias = block.attn.out_proj.bias
        b_out.append((bias if bias is not None else torch.zeros(width)) * scale)
    w_out_t = torch.stack(w_out)
    b_out_t = torch.stack(b_out)
    return FoldedWeights(
        head_out=w_out_t @ gamma_proj,
        head_out_mean=w_out_t.mean(-1),
        out_bias=b_out_t @ gamma_proj,
        out_bias_mean=b_out_t.mean(-1),
        gamma_proj=gamma_proj,
        ones_proj=gamma_proj.sum(0),
        beta_proj=beta @ proj,
        w_out=w_out_t,
        b_out=b_out_t,
    )


@dataclass(frozen=True)
class DirectEffects:
    """Per-component direct effects in the output space (or projected on texts), summing to the embedding.

    The last dim is d_out for vectors, or text for projections onto text directions.
    """

    embedding_term: torch.Tensor  # [batch, D]
    mlps: torch.Tensor  # [batch, layer, D]
    heads: torch.Tensor  # [batch, layer, head, D] (summed over tokens)
    tokens: torch.Tensor | None  # [batch, layer, head, token, D] when spatial
    norm: torch.Tensor  # [batch] |y| of the real forward
    convention: str

    def total(self) -> torch.Tensor:
        """[batch, D]: the sum of all components (= the embedding, or its projections)."""
        return self.embedding_term + self.mlps.sum(1) + self.heads.sum((1, 2))

    def scores(self) -> "DirectEffects":
        """Divide everything by |y|: projections on unit texts then sum to cosine similarities."""
        scale = self.norm.reshape(-1, 1)
        return DirectEffects(
            embedding_term=self.embedding_term / scale,
            mlps=self.mlps / scale[..., None],
            heads=self.heads / scale[..., None, None],
            tokens=None if self.tokens is None else self.tokens / scale[..., None, None, None],
            norm=self.norm,
            convention=self.convention,
        )


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")


def direct_effects(
    trace: VitTrace,
    folded: FoldedWeights,
    *,
    convention: str = "paper",
    spatial: bool = False,
    directions: torch.Tensor | None = None,
) -> DirectEffects:
    """Decompose the traced embedding into direct effects.

    directions: optional [text, D'] matrix; each component is then projected on its rows
      (pass unit text embeddings, then `.scores()` gives cosine contributions).
    spatial: also keep per-token head terms (needs a trace made with keep_values=True).
    A spatial decomposition reads the trace's values (keep_values=True) or, cheaper, its mapped values
    (value_maps=spatial_value_maps(folded, directions), the same directions).
    """
    _check_convention(convention)
    if spatial and trace.values is None and trace.mapped_values is None:
        raise ConfigError("spatial decomposition needs a trace with keep_values=True or with "
                          "value_maps=spatial_value_maps(folded, directions).")
    f = _project(folded, directions)
    n_layers = trace.n_layers
    n_heads, n_tokens = trace.attn_cls.shape[2], trace.attn_cls.shape[3]
    w_layer = 1.0 / (2 * n_layers + 1)  # K = 2L + 1 layer-level terms
    mu, s = trace.ln_post_mean, trace.ln_post_std

    embedding_term = _through_ln_post(trace.cls_embed @ f.gamma_proj, lambda: trace.cls_embed.mean(-1),
                                      w_layer, mu, s, f, convention)
    mlps = _through_ln_post(trace.mlp_cls @ f.gamma_proj, lambda: trace.mlp_cls.mean(-1), w_layer, mu, s, f, convention)
    # Heads, summed over tokens: c = z W_O + b_O / H
    heads = _through_ln_post(
        torch.einsum("blhd,lhdo->blho", trace.head_cls, f.head_out) + (f.out_bias / n_heads)[None, :, None, :],
        lambda: torch.einsum("blhd,lhd->blh", trace.head_cls, f.head_out_mean)
        + (f.out_bias_mean / n_heads)[None, :, None],
        w_layer / n_heads, mu, s, f, convention)
    tokens = _token_terms(trace, f, convention, w_layer, n_heads, n_tokens) if spatial else None
    return DirectEffects(embedding_term, mlps, heads, tokens, trace.embedding.norm(dim=-1), convention)


def _through_ln_post(projected, own_mean, share, mu, s, f: FoldedWeights, convention: str) -> torch.Tensor:
    """The centring rule, for any components: c~ = (c G - centre 1^T G) / s + share beta P.

    projected: c G [batch, ..., D] (G = diag(gamma) P, possibly folded with text directions), a fresh
    tensor this function overwrites (no temporaries of its size); centre: the component's `share` of
    the final LayerNorm's mean mu ("paper"), or its own mean over d_model ("centered": own_mean()
    [batch, ...], computed only then); mu, s: [batch].
    """
    batch_shape = (-1,) + (1,) * (projected.ndim - 2)
    centre = (mu * share).reshape(batch_shape) if convention == "paper" else own_mean()
    projected.sub_(centre[..., None] * f.ones_proj).div_(s.reshape(batch_shape)[..., None])
    return projected.add_(share * f.beta_proj)


def spatial_value_maps(folded: FoldedWeights, directions: torch.Tensor | None = None) -> torch.Tensor:
    """[layer, head, d_head, D + 1]: the `value_maps` a trace needs for a spatial decomposition onto `directions`
    [D, d_out] (None: the d_out output space): each head's folded output map projected on them, and in the last
    column its mean over d_model (the "centered" convention's own mean)."""
    f = _project(folded, directions)
    return torch.cat([f.head_out, f.head_out_mean[..., None]], -1)


def _token_terms(trace, f: FoldedWeights, convention: str, w_layer: float, n_heads: int, n_tokens: int) -> torch.Tensor:
    """[batch, layer, head, token, D]: c = a_{hi} v_i W_O + b_O / (T H) per cell."""
    cells = n_heads * n_tokens
    if trace.values is not None:
        value_term = torch.einsum("blthd,lhdo->blhto", trace.values, f.head_out)
        own_mean = lambda: torch.einsum("blthd,lhd->blht", trace.values, f.head_out_mean)  # noqa: E731
    else:
        maps = trace.value_maps
        if maps.shape != (*f.head_out.shape[:3], f.head_out.shape[3] + 1) or not (
                torch.equal(maps[..., :-1], f.head_out.to(maps)) and torch.equal(maps[..., -1], f.head_out_mean.to(maps))):
            raise ConfigError("the trace's value maps were made for other directions (or another model); trace with "
                              "value_maps=spatial_value_maps(folded, directions) for these directions.")
        value_term = trace.mapped_values[..., :-1].clone()
        own_mean = lambda: trace.mapped_values[..., -1]  # noqa: E731
    value_term.mul_(trace.attn_cls[..., None]).add_((f.out_bias / cells)[None, :, None, None, :])
    return _through_ln_post(
        value_term,
        lambda: own_mean() * trace.attn_cls + (f.out_bias_mean / cells)[None, :, None, None],
        w_layer / cells, trace.ln_post_mean, trace.ln_post_std, f, convention)


def _project(folded: FoldedWeights, directions: torch.Tensor | None) -> FoldedWeights:
    """Fold the text directions into the output maps so projections never build d_out vectors."""
    if directions is None:
        return folded
    if directions.ndim != 2 or directions.shape[1] != folded.gamma_proj.shape[1]:
        raise ConfigError(
            f"directions must be [text, {folded.gamma_proj.shape[1]}], got {list(directions.shape)}"
        )
    d = directions.to(folded.gamma_proj.dtype).T  # [d_out, text]
    return FoldedWeights(
        head_out=folded.head_out @ d,
        head_out_mean=folded.head_out_mean,
        out_bias=folded.out_bias @ d,
        out_bias_mean=folded.out_bias_mean,
        gamma_proj=folded.gamma_proj @ d,
        ones_proj=folded.ones_proj @ d,
        beta_proj=folded.beta_proj @ d,
        w_out=folded.w_out,
        b_out=folded.b_out,
    )


def cls_to_cls(trace: VitTrace, folded: FoldedWeights, *, convention: str = "paper") -> torch.Tensor:
    """[batch, layer, head, d_out]: each head's class-token -> class-token path (source token 0)."""
    _check_convention(convention)
    n_layers, n_heads, n_tokens = trace.n_layers, trace.attn_cls.shape[2], trace.attn_cls.shape[3]
    cells = n_heads * n_tokens
    attn0 = trace.attn_cls[..., 0]  # [batch, layer, head]
    value_term = torch.einsum("blhd,lhdo->blho", trace.value_cls, folded.head_out) * attn0[..., None]
    return _through_ln_post(
        value_term.add_((folded.out_bias / cells)[None, :, None, :]),
        lambda: torch.einsum("blhd,lhd->blh", trace.value_cls, folded.head_out_mean) * attn0
        + (folded.out_bias_mean / cells)[None, :, None],
        1.0 / ((2 * n_layers + 1) * cells), trace.ln_post_mean, trace.ln_post_std, folded, convention)
