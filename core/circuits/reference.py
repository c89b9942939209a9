"""Slow, literal per-path second-order effects: the oracle for `core.circuits.paths`.

For each later layer l' and head h on its own, the paper code's steps (paper 2, section 3 and its released code's second-order computation, steps 1-6) written out for
that head alone, from the module's raw weights and a by-hand forward pass (`core.engine.reference`): every
per-token, per-neuron residual write, ln_1 with the image's frozen statistics, the head's values, its class-token
attention mix, its out-projection (with its share of b_O), the final LayerNorm with frozen statistics and the
projection. Nothing is factorised; the sum over (l', h) is `core.engine.reference.literal_second_order`.
"""

from __future__ import annotations

import torch
from torch import nn

from core.engine.reference import literal_record


@torch.no_grad()
def literal_path_parts(visual: nn.Module, image: torch.Tensor, layer: int, neurons: list[int], mode: str = "paper",
                       coefficient: float = 100.0) -> torch.Tensor:
    """[neuron, later, head, d_out]: each path's part of phi_n for one image [3, H, W], head by head.

    Long on purpose: a literal oracle, one loop over later layers and one over heads.
    """
    rec = literal_record(visual, image, layer)
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    paper = mode == "paper"
    mlp = blocks[layer]
    ls_2 = mlp.ls_2.gamma if hasattr(mlp.ls_2, "gamma") else torch.ones(mlp.mlp.c_proj.weight.shape[0])
    w_all = mlp.mlp.c_proj.weight * ls_2[:, None]  # [d_model, neuron]
    b_out = mlp.mlp.c_proj.bias * ls_2
    n_mlp = w_all.shape[1]
    w_out, post = w_all[:, neurons], rec["post"][:, neurons]  # [d_model, neuron], [token, neuron]
    ln = visual.ln_post
    later_parts = []
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
        head_parts = []
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            writes = post[:, :, None] * w_out.T[None]  # [token, neuron, d_model]
            if paper:
                writes = writes + b_out / n_mlp
                normed = block.ln_1.weight * (writes - mean[:, None, None] / k1) / std[:, None, None] + block.ln_1.bias / k1
            else:
                normed = block.ln_1.weight * writes / std[:, None, None]
            values = normed @ w_v[rows].T + (b_v[rows] / k1 if paper else 0.0)  # [token, neuron, d_head]
            mixed = torch.einsum("t,tnd->nd", rec["patterns"][l2][h, 0], values)
            out = (mixed @ attn.out_proj.weight[:, rows].T + (attn.out_proj.bias / (k1 * heads) if paper else 0.0)) * ls_1
            if paper:
                folded = ln.weight * (out - rec["mu_post"] / k2) / rec["s_post"] + ln.bias / k2
            else:
                folded = ln.weight * out / rec["s_post"]
            head_parts.append(coefficient * (folded @ visual.proj) / rec["y"].norm())  # [neuron, d_out]
        later_parts.append(torch.stack(head_parts, 1))  # [neuron, head, d_out]
    return torch.stack(later_parts, 1)
