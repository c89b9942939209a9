"""Slow, literal implementations of the papers' equations: the oracles for tests and benchmarks.

Nothing here is fast or clever on purpose: each function loops over layers, heads and tokens
and writes every component vector out the way the paper's equations (B.1) state them, from the
module's raw weights, so that the fast paths in `core.contributions` can be checked against it.
"""

from __future__ import annotations

import torch
from torch import nn


def _ln_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(-1, keepdim=True)
    return mean, ((x - mean) ** 2).mean(-1, keepdim=True).add(eps).sqrt()


@torch.no_grad()
def literal_components(visual: nn.Module, image: torch.Tensor) -> dict:
    """Forward one image [3, H, W] by hand; return the raw (unfolded) residual components at the class token.

    Returns dict with: e0 [d_model], mlp [layer, d_model], attn [layer, head, token, d_model]
    (out-proj bias split evenly over tokens x heads; value bias carried by the attention weights),
    and x_final [d_model], the class-token residual they sum to.
    """
    x = visual._embeds(image[None])[0]  # [token, d_model]
    e0 = x[0].clone()
    mlps, attns = [], []
    for block in visual.transformer.resblocks:
        attn = block.attn
        heads, width = attn.num_heads, x.shape[-1]
        d_head = width // heads
        mean, std = _ln_stats(x, block.ln_1.eps)
        xn = (x - mean) / std * block.ln_1.weight + block.ln_1.bias
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        scale = block.ls_1.gamma if hasattr(block.ls_1, "gamma") else torch.ones(width)
        out_w = attn.out_proj.weight
        layer_terms = torch.zeros(heads, x.shape[0], width)
        full_out = torch.zeros_like(x)
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            q = xn @ w_q[rows].T + b_q[rows]
            k = xn @ w_k[rows].T + b_k[rows]
            v = xn @ w_v[rows].T + b_v[rows]
            pattern = torch.softmax(q @ k.T / d_head**0.5, dim=-1)  # [query, key]
            w_o = out_w[:, rows]  # [d_model, d_head]
            full_out += (pattern @ v) @ w_o.T
            for i in range(x.shape[0]):
                term = pattern[0, i] * (v[i] @ w_o.T) + attn.out_proj.bias / (x.shape[0] * heads)
                layer_terms[h, i] = term * scale
        x = x + (full_out + attn.out_proj.bias) * scale
        mlp = block.ls_2(block.mlp(block.ln_2(x)))
        x = x + mlp
        attns.append(layer_terms)
        mlps.append(mlp[0])
    return {"e0": e0, "mlp": torch.stack(mlps), "attn": torch.stack(attns), "x_final": x[0]}


@torch.no_grad()
def literal_direct_effects(visual: nn.Module, image: torch.Tensor, convention: str = "paper") -> dict:
    """The paper's folded components c~ = [gamma (c - w mu) / s + w beta] P for one image, one by one.

    convention "centered" uses c - mean(c) instead of c - w mu. Returns embedding_term [d_out],
    mlps [layer, d_out], tokens [layer, head, token, d_out] and the embedding y [d_out] they sum to.
    """
    parts = literal_components(visual, image)
    ln = visual.ln_post
    mu, s = _ln_stats(parts["x_final"], ln.eps)
    n_layers, n_heads, n_tokens = parts["attn"].shape[:3]
    k_terms = 2 * n_layers + 1

    def fold(c: torch.Tensor, share: float) -> torch.Tensor:
        centre = share * mu if convention == "paper" else c.mean()
        return (ln.weight * (c - centre) / s + share * ln.bias) @ visual.proj

    embedding_term = fold(parts["e0"], 1 / k_terms)
    mlps = torch.stack([fold(parts["mlp"][l], 1 / k_terms) for l in range(n_layers)])
    cell_share = 1 / (k_terms * n_heads * n_tokens)
    tokens = torch.zeros(n_layers, n_heads, n_tokens, visual.proj.shape[1])
    for l in range(n_layers):
        for h in range(n_heads):
            for i in range(n_tokens):
                tokens[l, h, i] = fold(parts["attn"][l, h, i], cell_share)
    y = (ln.weight * (parts["x_final"] - mu) / s + ln.bias) @ visual.proj
    return {"embedding_term": embedding_term, "mlps": mlps, "tokens": tokens, "embedding": y}
