"""Second-order effects of MLP neurons (Gandelsman et al., ICLR 2025), in factorised form.

A neuron n of MLP layer l writes p_{i,n} w_n to the residual at every token i. Its second-order
effect phi_n is what that write contributes to the image embedding through the value/OV path of
every later attention head (l' > l, head h), with each later ln_1's per-token statistics, every
attention pattern and the final LayerNorm's statistics frozen at the unperturbed forward pass:

    phi_n = coefficient / |y| * sum_{l' > l, h} r_n^{l', h}              [d_out]

The papers' caveats apply: later MLPs and the neuron's effect on queries and keys are ignored,
and the attention patterns are those of the unperturbed pass.

Conventions (`mode`):
  "paper"  (default, the official code): biases and LayerNorm means are split in equal shares
           with the papers' constants k1 = (1 + 2 l') N and k2 = (1 + 2 l')(1 + 2 L) H N
           (N = d_mlp, L layers, H heads), so that the sum over all neurons is the layer's
           whole second-order path (`layer_second_order_path`).
  "linear" only the LN-scaled linear part p_{i,n} w_n (no bias or mean shares).

Fast form. Per image only a scalar per (later layer, head, neuron) depends on the neuron,

    a_{l',h,n} = sum_i alpha^{l',h}_{0i} p_{i,n} / s^{l'}_i        (`second_order_scalars`)

contracted with image-independent directions u^{l',h}_n = (ls_1 * W_O^h W_V^h (gamma_1^{l'} * w_n))
diag(gamma_post) P, built once per model and layer (`second_order_basis`). Every bias and mean
share is a neuron-independent vector times an image-dependent scalar, added once.

>>> basis = second_order_basis(visual, layer=9)
>>> trace = trace_vit(visual, images, mlp_layers=[9])
>>> phi = second_order_effects(trace, basis)      # [batch, neuron, d_out]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.engine.contributions import fold_weights
from core.errors import ConfigError, check_index
from core.engine.trace import VitTrace, check_supported

MODES = ("paper", "linear")
COEFFICIENT = 100.0  # the papers scale every second-order effect by 100 (text pools are x100 too)
_CACHE_SIZE = 4  # a ViT-B-32 basis is ~150 MB; keep only a few


@dataclass(frozen=True)
class SecondOrderBasis:
    """Image-independent parts of the second-order effects of one MLP layer.

    `directions` is stored neuron-first so that the per-neuron contraction is one batched matmul
    over contiguous memory. "later" indexes `later_layers`.
    """

    layer: int
    later_layers: tuple[int, ...]
    n_layers: int  # L, all layers of the tower
    directions: torch.Tensor  # [neuron, later, head, d_out]  u^{l',h}_n
    mlp_bias_directions: torch.Tensor  # [later, head, d_out]  path of gamma_1 * b_out (c_proj bias, LayerScale)
    ln_mean_directions: torch.Tensor  # [later, head, d_out]  path of gamma_1 (the ln_1 mean share)
    ln_bias_directions: torch.Tensor  # [later, head, d_out]  W_O (W_V beta_1 + b_V), folded
    out_bias: torch.Tensor  # [later, d_out]  ls_1 * b_O, folded
    ones_proj: torch.Tensor  # [d_out]  1^T diag(gamma_post) P (the ln_post mean share)
    beta_proj: torch.Tensor  # [d_out]  beta_post P

    @property
    def d_mlp(self) -> int:
        return self.directions.shape[0]

    @property
    def n_heads(self) -> int:
        return self.directions.shape[2]


def _layer_scale(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    gamma = getattr(module, "gamma", None)
    return gamma.detach() if gamma is not None else torch.ones_like(like)


def _or_zeros(tensor: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor:
    return tensor.detach() if tensor is not None else torch.zeros(size, dtype=like.dtype, device=like.device)


def _ln_affine(ln: nn.LayerNorm, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight = ln.weight.detach() if ln.weight is not None else torch.ones(width, dtype=like.dtype, device=like.device)
    return weight, _or_zeros(ln.bias, width, like)


def mlp_output_weights(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [d_model, neuron], b_out [d_model]): c_proj weight and bias with ls_2 LayerScale folded in."""
    c_proj = block.mlp.c_proj
    width = c_proj.weight.shape[0]
    scale = _layer_scale(block.ls_2, c_proj.weight[:, 0])
    return c_proj.weight.detach() * scale[:, None], _or_zeros(c_proj.bias, width, scale) * scale


def value_weights(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_V [head, d_head, d_model], b_V [head, d_head]) of one block's attention."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    weight = attn.in_proj_weight.detach()[2 * width:].reshape(heads, width // heads, width)
    bias = _or_zeros(attn.in_proj_bias, 3 * width, weight)[2 * width:].reshape(heads, width // heads)
    return weight, bias


def check_layer(visual: nn.Module, layer: int) -> int:
    n_layers = len(visual.transformer.resblocks)
    check_index("layer", layer, n_layers)
    if layer == n_layers - 1:
        raise ConfigError(
            f"layer {layer} has no later attention layers, so its neurons have no second-order effect; "
            f"choose a layer in 0..{n_layers - 2}."
        )
    return layer


_CACHE: dict[tuple, SecondOrderBasis] = {}


def second_order_basis(visual: nn.Module, layer: int) -> SecondOrderBasis:
    """Precompute the image-independent directions of MLP `layer`'s neurons (cached per weight version).

    Memory: d_mlp x (later layers x heads) x d_out floats (ViT-B-32, layer 9: 151 MB).
    """
    check_supported(visual)
    check_layer(visual, layer)
    key = (id(visual), layer) + tuple((p.data_ptr(), p._version) for p in visual.parameters())
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    with torch.no_grad():
        basis = _build_basis(visual, layer)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = basis
    return basis


def _build_basis(visual: nn.Module, layer: int) -> SecondOrderBasis:
    blocks = visual.transformer.resblocks
    w, _ = mlp_output_weights(blocks[layer])
    head_out = fold_weights(visual).head_out  # [layer, head, d_head, d_out] = (ls_1 * W_O^h) diag(gamma_post) P
    directions = [torch.einsum("nhd,hdo->nho", _neuron_values(blocks[index], w), head_out[index])
                  for index in range(layer + 1, len(blocks))]
    shared = bias_paths(visual, layer)
    return SecondOrderBasis(
        layer=layer,
        later_layers=shared.later_layers,
        n_layers=shared.n_layers,
        directions=torch.stack(directions, 1).contiguous(),
        mlp_bias_directions=shared.mlp_bias_directions,
        ln_mean_directions=shared.ln_mean_directions,
        ln_bias_directions=shared.ln_bias_directions,
        out_bias=shared.out_bias,
        ones_proj=shared.ones_proj,
        beta_proj=shared.beta_proj,
    )


def _neuron_values(block: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """[neuron, head, d_head]: W_V^h (gamma_1 * w_n), the writes w [d_model, neuron] as one block's heads read them."""
    gamma_1, _ = _ln_affine(block.ln_1, w.shape[0], w)
    w_v, _ = value_weights(block)
    return torch.einsum("mn,hdm->nhd", gamma_1[:, None] * w, w_v)


@torch.no_grad()
def path_values(visual: nn.Module, layer: int, neurons: list[int] | None = None,
                later: list[int] | None = None) -> torch.Tensor:
    """[neuron, later, head, d_head]: W_V^h (gamma_1^{l'} * w_n) for every later layer l' and head h.

    The neuron-dependent factor of u^{l',h}_n = head_out^{l',h} applied to it (`SecondOrderBasis.directions`),
    d_head wide instead of d_out: a chunk of `neurons` (default all) costs neuron x later x head x d_head floats.
    later: some of the later layers only (default all, in order).
    """
    check_supported(visual)
    check_layer(visual, layer)
    blocks = visual.transformer.resblocks
    later = list(range(layer + 1, len(blocks))) if later is None else list(later)
    for index in later:
        if not layer < index < len(blocks):
            raise ConfigError(f"layer {index} is not a later layer of MLP {layer} (choose {layer + 1}..{len(blocks) - 1})")
    w, _ = mlp_output_weights(blocks[layer])
    if neurons is not None:
        w = w[:, _neuron_index(neurons, w.shape[1], w.device)]
    return torch.stack([_neuron_values(blocks[index], w) for index in later], 1)


@dataclass(frozen=True)
class BiasPaths:
    """The neuron-independent part of one MLP layer's second-order basis (no [neuron, ...] tensor): the
    paths of every bias and mean share, as `SecondOrderBasis` holds them. `second_order_scalars` and
    `path_shared_terms` accept either."""

    layer: int
    later_layers: tuple[int, ...]
    n_layers: int
    d_mlp: int
    n_heads: int
    mlp_bias_directions: torch.Tensor  # [later, head, d_out]
    ln_mean_directions: torch.Tensor  # [later, head, d_out]
    ln_bias_directions: torch.Tensor  # [later, head, d_out]
    out_bias: torch.Tensor  # [later, d_out]
    ones_proj: torch.Tensor  # [d_out]
    beta_proj: torch.Tensor  # [d_out]


@torch.no_grad()
def bias_paths(visual: nn.Module, layer: int) -> BiasPaths:
    """The bias and mean-share paths of MLP `layer` (small: later x head x d_out)."""
    check_supported(visual)
    check_layer(visual, layer)
    folded = fold_weights(visual)
    blocks = visual.transformer.resblocks
    w, b_out = mlp_output_weights(blocks[layer])
    later = tuple(range(layer + 1, len(blocks)))
    mlp_bias, ln_mean, ln_bias = [], [], []
    for index in later:
        block = blocks[index]
        gamma_1, beta_1 = _ln_affine(block.ln_1, w.shape[0], w)
        w_v, b_v = value_weights(block)
        head_out = folded.head_out[index]  # [head, d_head, d_out] = (ls_1 * W_O^h) diag(gamma_post) P

        def through_head(vector: torch.Tensor) -> torch.Tensor:  # [d_model] -> [head, d_out]
            return torch.einsum("hdm,m,hdo->ho", w_v, vector, head_out)

        mlp_bias.append(through_head(gamma_1 * b_out))
        ln_mean.append(through_head(gamma_1))
        ln_bias.append(through_head(beta_1) + torch.einsum("hd,hdo->ho", b_v, head_out))
    return BiasPaths(
        layer=layer,
        later_layers=later,
        n_layers=len(blocks),
        d_mlp=w.shape[1],
        n_heads=blocks[later[0]].attn.num_heads,
        mlp_bias_directions=torch.stack(mlp_bias),
        ln_mean_directions=torch.stack(ln_mean),
        ln_bias_directions=torch.stack(ln_bias),
        out_bias=folded.out_bias[list(later)],
        ones_proj=folded.ones_proj,
        beta_proj=folded.beta_proj,
    )


def _activations(trace: VitTrace, basis: SecondOrderBasis) -> torch.Tensor:
    """[batch, token, neuron] post-activations of the basis layer, checked against the basis."""
    post = trace.mlp_post.get(basis.layer)
    if post is None:
        raise ConfigError(
            f"the trace has no MLP activations of layer {basis.layer}; trace with mlp_layers=[{basis.layer}]."
        )
    if post.shape[-1] != basis.d_mlp or trace.n_layers != basis.n_layers or trace.attn_cls.shape[2] != basis.n_heads:
        raise ConfigError("the trace and the second-order basis come from different models.")
    return post


def second_order_scalars(trace: VitTrace, basis: SecondOrderBasis) -> torch.Tensor:
    """[batch, later, head, neuron]: a_{l',h,n} = sum_i alpha^{l',h}_{0i} p_{i,n} / s^{l'}_i."""
    post = _activations(trace, basis)
    later = list(basis.later_layers)
    weights = trace.attn_cls[:, later] / trace.ln1_std[:, later, None, :]  # [batch, later, head, token]
    return torch.einsum("blht,btn->blhn", weights, post.to(weights.dtype))


def _k1(basis) -> torch.Tensor:
    """[later]: the papers' share constant k1 = (1 + 2 l') N of each later layer."""
    later = list(basis.later_layers)
    return (1.0 + 2.0 * torch.tensor(later, dtype=basis.out_bias.dtype, device=basis.out_bias.device)) * basis.d_mlp


def _shared_term(trace: VitTrace, basis: SecondOrderBasis) -> torch.Tensor:
    """[batch, d_out]: every bias and mean share of one neuron in "paper" mode (the same for all
    neurons), before the final coefficient / |y| and with the ln_post std already divided out."""
    later = list(basis.later_layers)
    n_neurons = basis.d_mlp
    k1 = _k1(basis)
    alpha = trace.attn_cls[:, later]  # [batch, later, head, token]
    inv_std = 1.0 / trace.ln1_std[:, later, None, :]
    alpha_sum = alpha.sum(-1)  # 1 up to rounding; kept so the fast form equals the literal one exactly
    alpha_over_std = (alpha * inv_std).sum(-1)
    alpha_mean_over_std = (alpha * inv_std * trace.ln1_mean[:, later, None, :]).sum(-1)
    per_head = (
        torch.einsum("blh,lho->bo", alpha_over_std / n_neurons, basis.mlp_bias_directions)
        - torch.einsum("blh,lho->bo", alpha_mean_over_std / k1[:, None], basis.ln_mean_directions)
        + torch.einsum("blh,lho->bo", alpha_sum / k1[:, None], basis.ln_bias_directions)
    )
    out_bias = (basis.out_bias / k1[:, None]).sum(0)  # b_O / (k1 H) summed over the H heads
    post_share = (1.0 / (k1 * (1 + 2 * basis.n_layers) * basis.n_heads)).sum() * basis.n_heads  # sum of 1/k2
    s_post, mu_post = trace.ln_post_std[:, None], trace.ln_post_mean[:, None]
    return (per_head + out_bias) / s_post + post_share * (basis.beta_proj - mu_post / s_post * basis.ones_proj)


def path_shared_terms(trace: VitTrace, basis) -> torch.Tensor:
    """[batch, later, head, d_out]: `_shared_term` split over the paths (l', h) that carry it.

    Path (l', h) gets the shares that pass through head h of layer l': the c_proj bias, ln_1 mean, ln_1
    bias and value bias shares through its values, b_O / (k1 H) of the out-projection bias, and 1 / k2
    of the ln_post mean and bias shares (k2 = k1 (1 + 2 L) H). Summed over all paths it is `_shared_term`.
    `basis`: a SecondOrderBasis or BiasPaths.
    """
    later = list(basis.later_layers)
    k1 = _k1(basis)[:, None]  # [later, 1]
    alpha = trace.attn_cls[:, later]  # [batch, later, head, token]
    inv_std = 1.0 / trace.ln1_std[:, later, None, :]
    alpha_sum = alpha.sum(-1)
    alpha_over_std = (alpha * inv_std).sum(-1)
    alpha_mean_over_std = (alpha * inv_std * trace.ln1_mean[:, later, None, :]).sum(-1)
    through_values = ((alpha_over_std / basis.d_mlp)[..., None] * basis.mlp_bias_directions
                      - (alpha_mean_over_std / k1)[..., None] * basis.ln_mean_directions
                      + (alpha_sum / k1)[..., None] * basis.ln_bias_directions)  # [batch, later, head, d_out]
    out_bias = (basis.out_bias / (k1 * basis.n_heads))[:, None, :]  # [later, 1, d_out]
    k2 = k1 * (1 + 2 * basis.n_layers) * basis.n_heads  # [later, 1]
    s_post, mu_post = trace.ln_post_std[:, None, None, None], trace.ln_post_mean[:, None, None, None]
    post = (basis.beta_proj - mu_post / s_post * basis.ones_proj) / k2[None, :, :, None]  # [batch, later, 1, d_out]
    return (through_values + out_bias) / s_post + post


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")


def _neuron_index(neurons, d_mlp: int, device) -> torch.Tensor | None:
    if neurons is None:
        return None
    neurons = [neurons] if isinstance(neurons, int) else list(neurons)
    for neuron in neurons:
        check_index("neuron", neuron, d_mlp)
    return torch.tensor(neurons, dtype=torch.long, device=device)


@torch.inference_mode()
def second_order_effects(
    trace: VitTrace,
    basis: SecondOrderBasis,
    *,
    mode: str = "paper",
    coefficient: float = COEFFICIENT,
    neurons: list[int] | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """[batch, neuron, d_out]: phi_n for every neuron of `basis.layer` (or the listed `neurons`).

    trace: made with `mlp_layers=[basis.layer]` on the same model as `basis`.
    chunk: neurons per batched matmul, to bound temporary memory (default: all at once).
    """
    _check_mode(mode)
    index = _neuron_index(neurons, basis.d_mlp, basis.directions.device)
    scalars = second_order_scalars(trace, basis)  # [batch, later, head, neuron]
    batch = scalars.shape[0]
    scale = coefficient / trace.embedding.norm(dim=-1)  # [batch]
    # fold the per-image scale into the small scalars rather than into the [batch, neuron, d_out] result
    scalars = scalars.reshape(batch, -1, basis.d_mlp) * (scale / trace.ln_post_std)[:, None, None]
    directions = basis.directions
    if index is not None:
        scalars, directions = scalars[..., index], directions[index]
    scalars = scalars.permute(2, 0, 1).contiguous()  # [neuron, batch, later*head]: one small copy, contiguous rows
    directions = directions.reshape(directions.shape[0], -1, directions.shape[-1])  # [neuron, later*head, d_out]
    n_out = directions.shape[0]
    effects = torch.empty(batch, n_out, directions.shape[-1], dtype=directions.dtype, device=directions.device)
    step = chunk or n_out
    for start in range(0, n_out, step):
        part = slice(start, start + step)
        # [neuron, batch, later*head] @ [neuron, later*head, d_out], written straight into the [batch, neuron, d_out]
        # result through its transposed view (no intermediate of the result's size)
        torch.bmm(scalars[part], directions[part], out=effects[:, part].transpose(0, 1))
    if mode == "paper":
        effects += (_shared_term(trace, basis) * scale[:, None])[:, None, :]
    return effects


@torch.inference_mode()
def layer_second_order_path(
    trace: VitTrace,
    visual: nn.Module,
    layer: int,
    *,
    mode: str = "paper",
    coefficient: float = COEFFICIENT,
) -> torch.Tensor:
    """[batch, d_out]: the whole second-order path of MLP `layer`, computed without the neuron split.

    Pushes the layer's full output c_proj(p_i) (bias included, LayerScale folded) at every token
    through each later head with frozen ln_1 stats and attention rows, with whole-layer shares
    mu_i / (1 + 2 l'), beta_1 / (1 + 2 l'), b_V / (1 + 2 l'), b_O / ((1 + 2 l') H) and
    mu_post, beta_post / ((1 + 2 l')(1 + 2 L) H). Equals the sum of `second_order_effects` over
    all neurons (in either mode).
    """
    _check_mode(mode)
    check_layer(visual, layer)
    blocks = visual.transformer.resblocks
    post = trace.mlp_post.get(layer)
    if post is None:
        raise ConfigError(f"the trace has no MLP activations of layer {layer}; trace with mlp_layers=[{layer}].")
    paper = mode == "paper"
    w, b_out = mlp_output_weights(blocks[layer])
    output = post @ w.T + (b_out if paper else 0.0)  # [batch, token, d_model]
    total = torch.zeros_like(trace.embedding)
    for index in range(layer + 1, len(blocks)):
        total += _path_through_layer(trace, visual, index, output, paper)
    return total * (coefficient / trace.embedding.norm(dim=-1))[:, None]


def _path_through_layer(trace: VitTrace, visual: nn.Module, index: int, output: torch.Tensor, paper: bool) -> torch.Tensor:
    """[batch, d_out]: `output` [batch, token, d_model] through all heads of later layer `index`."""
    block = visual.transformer.resblocks[index]
    n_layers = len(visual.transformer.resblocks)
    share = 1.0 / (1 + 2 * index)
    heads = block.attn.num_heads
    gamma_1, beta_1 = _ln_affine(block.ln_1, output.shape[-1], output)
    mean, std = trace.ln1_mean[:, index, :, None], trace.ln1_std[:, index, :, None]
    normed = gamma_1 * (output - (mean * share if paper else 0.0)) / std + (beta_1 * share if paper else 0.0)
    w_v, b_v = value_weights(block)
    values = torch.einsum("btm,hdm->bthd", normed, w_v) + (b_v * share if paper else 0.0)
    mixed = torch.einsum("bht,bthd->bhd", trace.attn_cls[:, index], values)
    w_o = block.attn.out_proj.weight.detach().reshape(-1, heads, w_v.shape[1])  # [d_model, head, d_head]
    b_o = _or_zeros(block.attn.out_proj.bias, w_o.shape[0], w_o)
    head_out = torch.einsum("bhd,mhd->bhm", mixed, w_o) + (b_o * share / heads if paper else 0.0)
    head_out = head_out * _layer_scale(block.ls_1, b_o)
    gamma_post, beta_post = _ln_affine(visual.ln_post, output.shape[-1], output)
    post_share = share / ((1 + 2 * n_layers) * heads)
    s_post, mu_post = trace.ln_post_std[:, None, None], trace.ln_post_mean[:, None, None]
    centred = head_out - (mu_post * post_share if paper else 0.0)
    folded = gamma_post * centred / s_post + (beta_post * post_share if paper else 0.0)
    width = output.shape[-1]
    proj = visual.proj.detach() if visual.proj is not None else torch.eye(width, dtype=output.dtype, device=output.device)
    return (folded @ proj).sum(1)
