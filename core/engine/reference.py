"""Slow, literal implementations of the papers' equations: the oracles for tests and benchmarks.

Nothing here is fast or clever on purpose: each function loops over layers, heads and tokens
and writes every component vector out the way the paper's equations (B.1) state them, from the
module's raw weights, so that the fast paths in `core.engine.contributions` can be checked against it.
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
    Long on purpose: a literal oracle that re-implements the forward pass step by step.
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


@torch.no_grad()
def _literal_record(visual: nn.Module, image: torch.Tensor, layer: int) -> dict:
    """Forward one image by hand, keeping what the second-order lens reads: per layer the ln_1
    stats at every token and the full attention pattern of every head, MLP `layer`'s
    post-activations [token, d_mlp], the ln_post stats and the embedding y."""
    x = visual._embeds(image[None])[0]  # [token, d_model]
    ln1, patterns, post = [], [], None
    for index, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        heads, width = attn.num_heads, x.shape[-1]
        d_head = width // heads
        mean, std = _ln_stats(x, block.ln_1.eps)
        xn = (x - mean) / std * block.ln_1.weight + block.ln_1.bias
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        layer_patterns, merged = [], []
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            q = xn @ w_q[rows].T + b_q[rows]
            k = xn @ w_k[rows].T + b_k[rows]
            pattern = torch.softmax(q @ k.T / d_head**0.5, dim=-1)  # [query, key]
            layer_patterns.append(pattern)
            merged.append(pattern @ (xn @ w_v[rows].T + b_v[rows]))
        x = x + block.ls_1(torch.cat(merged, -1) @ attn.out_proj.weight.T + attn.out_proj.bias)
        hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(x)))
        if index == layer:
            post = hidden
        x = x + block.ls_2(block.mlp.c_proj(hidden))
        ln1.append((mean[:, 0], std[:, 0]))
        patterns.append(torch.stack(layer_patterns))
    ln = visual.ln_post
    mu_post, s_post = _ln_stats(x[0], ln.eps)
    y = (ln.weight * (x[0] - mu_post) / s_post + ln.bias) @ visual.proj
    return {"ln1": ln1, "patterns": patterns, "post": post, "mu_post": mu_post, "s_post": s_post, "y": y}


literal_record = _literal_record  # public: other packages' oracles (core.circuits.reference) read the same record


@torch.no_grad()
def literal_second_order(
    visual: nn.Module,
    image: torch.Tensor,
    layer: int,
    mode: str = "paper",
    coefficient: float = 100.0,
    neurons: list[int] | None = None,
) -> torch.Tensor:
    """[neuron, d_out]: second-order effects phi_n of MLP `layer`'s neurons on one image [3, H, W],
    step by step as the paper's code does (B.7 steps 1-6), materialising every per-token,
    per-neuron residual write [token, neuron, d_model] for each later layer and head.

    mode "linear" drops every bias and mean share. `neurons` restricts to a subset (same order).
    Long on purpose: a literal oracle, one loop over later layers and heads with the paper code's
    steps written out in order, so that it can be checked against the paper line by line.
    """
    rec = _literal_record(visual, image, layer)
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    paper = mode == "paper"
    mlp = blocks[layer]
    ls_2 = mlp.ls_2.gamma if hasattr(mlp.ls_2, "gamma") else torch.ones(mlp.mlp.c_proj.weight.shape[0])
    w_out = mlp.mlp.c_proj.weight * ls_2[:, None]  # [d_model, neuron]
    b_out = mlp.mlp.c_proj.bias * ls_2
    post = rec["post"]  # [token, neuron]
    n_mlp = w_out.shape[1]
    if neurons is not None:
        w_out, post = w_out[:, neurons], post[:, neurons]
    ln = visual.ln_post
    phi = torch.zeros(post.shape[1], visual.proj.shape[1])
    for l2 in range(layer + 1, n_layers):
        block = blocks[l2]
        attn = block.attn
        heads, width = attn.num_heads, w_out.shape[0]
        d_head = width // heads
        k1 = (1 + 2 * l2) * n_mlp
        k2 = (1 + 2 * l2) * (1 + 2 * n_layers) * heads * n_mlp
        mean, std = rec["ln1"][l2]
        _, _, w_v = attn.in_proj_weight.chunk(3)
        _, _, b_v = attn.in_proj_bias.chunk(3)
        ls_1 = block.ls_1.gamma if hasattr(block.ls_1, "gamma") else torch.ones(width)
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            # step 1: every neuron's write at every token, [token, neuron, d_model]
            writes = post[:, :, None] * w_out.T[None]
            if paper:
                writes = writes + b_out / n_mlp
            # step 2: ln_1 of block l2 with this image's frozen per-token stats
            if paper:
                normed = block.ln_1.weight * (writes - mean[:, None, None] / k1) / std[:, None, None] + block.ln_1.bias / k1
            else:
                normed = block.ln_1.weight * writes / std[:, None, None]
            # step 3: values, class-token attention mix, out-projection (and LayerScale)
            values = normed @ w_v[rows].T + (b_v[rows] / k1 if paper else 0.0)  # [token, neuron, d_head]
            mixed = torch.einsum("t,tnd->nd", rec["patterns"][l2][h, 0], values)
            out = mixed @ attn.out_proj.weight[:, rows].T + (attn.out_proj.bias / (k1 * heads) if paper else 0.0)
            out = out * ls_1
            # step 4: final LayerNorm with frozen stats, and the projection
            if paper:
                folded = ln.weight * (out - rec["mu_post"] / k2) / rec["s_post"] + ln.bias / k2
            else:
                folded = ln.weight * out / rec["s_post"]
            # steps 5-6
            phi += coefficient * (folded @ visual.proj) / rec["y"].norm()
    return phi
