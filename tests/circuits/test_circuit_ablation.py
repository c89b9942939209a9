"""Path ablation: the hooked re-run of the real open_clip model equals a by-hand forward with the intervention
written out; the lens equals the change of the second-order effect; attribution patching is the real effect's
first-order term (finite differences)."""

import copy
import dataclasses

import torch

from core.circuits.ablation import (ablate_paths, attribution_scores, lens_path_effects, real_neuron_effect,
                                    real_path_effects, token_means)
from core.engine.models import load_clip
from core.engine.trace import trace_vit
from core.neurons.second_order import mlp_output_weights, second_order_basis, second_order_effects
from tests.conftest import random_pixels

LAYER, NEURON = 0, 5


def _model(spec="Tiny-ViT-LayerScale/none", seed=0):
    bundle = load_clip(spec)
    visual = copy.deepcopy(bundle.model.visual)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if param.ndim == 1:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return bundle, visual


def _literal(visual, pixels, layer, neuron, means, ablated: set, whole: bool = False):
    """The embedding with the neuron's activation replaced by `means` in the values of the `ablated`
    (layer, head) heads (or, `whole`, in the residual), by hand: every block written out."""
    blocks = visual.transformer.resblocks
    w, _ = mlp_output_weights(blocks[layer])
    x = visual._embeds(pixels)
    post = None
    for index, block in enumerate(blocks):
        attn = block.attn
        batch, tokens, width = x.shape
        heads, d_head = attn.num_heads, width // attn.num_heads
        xn = block.ln_1(x)
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        merged = []
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            q, k = xn @ w_q[rows].T + b_q[rows], xn @ w_k[rows].T + b_k[rows]
            pattern = torch.softmax(q @ k.transpose(-1, -2) / d_head**0.5, dim=-1)
            source = xn
            if (index, h) in ablated:
                source = block.ln_1(x + (means[None] - post[..., neuron])[..., None] * w[:, neuron])
            merged.append(pattern @ (source @ w_v[rows].T + b_v[rows]))
        x = x + block.ls_1(torch.cat(merged, -1) @ attn.out_proj.weight.T + attn.out_proj.bias)
        hidden = block.mlp.gelu(block.mlp.c_fc(block.ln_2(x)))
        if index == layer:
            post = hidden
            if whole:
                hidden = hidden.clone()
                hidden[..., neuron] = means
        x = x + block.ls_2(block.mlp.c_proj(hidden))
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_hooked_ablation_equals_a_forward_written_out():
    """In float64, so that the comparison is not float32 cancellation in m_clean - m_ablated."""
    bundle, visual = _model()
    visual = visual.double()
    pixels = random_pixels(bundle, batch=3, seed=1).double()
    means = token_means(visual, LAYER, [(None, random_pixels(bundle, batch=4, seed=2).double())],
                        neurons=[NEURON])[:, 0].double()
    target = torch.nn.functional.normalize(torch.randn(visual.proj.shape[1], generator=torch.Generator().manual_seed(3),
                                                       dtype=torch.float64), dim=0)
    sets = [{(1, 0)}, {(2, 3), (1, 1)}, {(1, h) for h in range(4)} | {(2, h) for h in range(4)}, set()]
    masks = torch.zeros(len(sets), 2, 4, dtype=torch.bool)
    for row, chosen in enumerate(sets):
        for l2, h in chosen:
            masks[row, l2 - 1, h] = True
    effects = real_path_effects(visual, pixels, LAYER, NEURON, means, masks, target, max_rows=4)
    with torch.no_grad():
        clean = visual(pixels)
        for row, chosen in enumerate(sets):
            ablated = _literal(visual, pixels, LAYER, NEURON, means, chosen)
            expected = 100 * ((clean - ablated) @ target) / clean.norm(dim=-1)
            torch.testing.assert_close(effects[row], expected, rtol=1e-9, atol=1e-12)
        whole = _literal(visual, pixels, LAYER, NEURON, means, set(), whole=True)
    assert float(effects[-1].abs().max()) == 0.0  # nothing ablated, nothing moves
    torch.testing.assert_close(real_neuron_effect(visual, pixels, LAYER, NEURON, means, target),
                               100 * ((clean - whole) @ target) / clean.norm(dim=-1), rtol=1e-9, atol=1e-12)


def test_the_lens_is_the_change_of_the_second_order_effect_and_adds_up():
    bundle, visual = _model()
    pixels = random_pixels(bundle, batch=3, seed=1)
    means = torch.linspace(0.0, 0.5, (bundle.info.image_size // bundle.info.patch_size) ** 2 + 1)
    target = torch.nn.functional.normalize(torch.randn(visual.proj.shape[1], generator=torch.Generator().manual_seed(3)),
                                           dim=0)
    lens = lens_path_effects(visual, pixels, LAYER, NEURON, means, target)  # [batch, later, head]
    trace = trace_vit(visual, pixels, mlp_layers=[LAYER])
    post = trace.mlp_post[LAYER].clone()
    post[..., NEURON] = means
    basis = second_order_basis(visual, LAYER)
    for mode in ("paper", "linear"):
        before = second_order_effects(trace, basis, mode=mode, neurons=[NEURON])[:, 0] @ target
        after = second_order_effects(dataclasses.replace(trace, mlp_post={LAYER: post}), basis, mode=mode,
                                     neurons=[NEURON])[:, 0] @ target
        torch.testing.assert_close(lens.sum((1, 2)), before - after, rtol=1e-4, atol=1e-6)


def test_attribution_patching_is_the_first_order_term_of_the_real_effect():
    bundle, visual = _model()
    visual = visual.double()
    pixels = random_pixels(bundle, batch=1, seed=7).double()
    target = torch.nn.functional.normalize(torch.randn(visual.proj.shape[1], generator=torch.Generator().manual_seed(3),
                                                       dtype=torch.float64), dim=0)
    post = trace_vit(visual, pixels, mlp_layers=[LAYER]).mlp_post[LAYER][0, :, NEURON]
    means = post + 0.3  # a mean activation per token
    scores = attribution_scores(visual, pixels, LAYER, NEURON, means, target)[0]  # [later, head]
    eps = 1e-4
    masks = torch.eye(8, dtype=torch.bool).reshape(8, 2, 4)
    small = real_path_effects(visual, pixels, LAYER, NEURON, post + eps * (means - post), masks, target)[:, 0]
    torch.testing.assert_close(small.reshape(2, 4) / eps, scores, rtol=1e-3, atol=1e-9)


def test_the_report_adds_each_path_and_all_paths():
    bundle, visual = _model("Tiny-ViT/none")
    pixels = random_pixels(bundle, batch=2, seed=1)
    means = token_means(visual, LAYER, [(None, random_pixels(bundle, batch=4, seed=2))], neurons=[NEURON])[:, 0]
    target = torch.nn.functional.normalize(torch.ones(visual.proj.shape[1]), dim=0)
    report = ablate_paths(visual, pixels, LAYER, NEURON, means, target)
    assert report.lens.shape == report.real.shape == (2, 4) and report.n_images == 2
    assert abs(report.lens_all - float(report.lens.sum())) <= 1e-6 * max(1.0, abs(report.lens_all))
    assert report.share_explained == report.lens_all / report.neuron_real
