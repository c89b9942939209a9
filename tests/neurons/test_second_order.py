"""Second-order effects of MLP neurons: factorised form vs the paper's literal steps, sum rule, linearity."""

import contextlib
import copy
import dataclasses

import pytest
import torch

from core.engine.contributions import fold_weights
from core.errors import ConfigError, IndexRangeError
from core.engine.models import load_clip
from core.engine.reference import literal_second_order
from core.neurons.second_order import (
    MODES,
    layer_second_order_path,
    second_order_basis,
    second_order_effects,
    second_order_scalars,
)
from core.engine.trace import trace_vit
from tests.conftest import TINY_SPECS, random_pixels


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _randomise_affine(visual, seed=0):
    """Make LayerNorm affines, biases and LayerScales random, in place: at open_clip's init most of
    them are exactly 0 or 1, which would hide mistakes in the bias and mean shares."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if param.ndim != 1:
                continue
            if name.endswith(("weight", "gamma")):
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            else:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return visual


def _with_random_affine(visual, seed=0):
    return _randomise_affine(copy.deepcopy(visual), seed)


@contextlib.contextmanager
def _random_affine_in_place(visual, seed=0):
    """Randomise a shared (cached) model's 1-d parameters for the duration of a block; cheaper than a copy."""
    saved = {name: param.detach().clone() for name, param in visual.named_parameters() if param.ndim == 1}
    try:
        yield _randomise_affine(visual, seed)
    finally:
        with torch.no_grad():
            for name, param in visual.named_parameters():
                if name in saved:
                    param.copy_(saved[name])


@pytest.fixture(scope="module", params=TINY_SPECS)
def tiny_case(request):
    bundle = load_clip(request.param)
    return _with_random_affine(bundle.model.visual), random_pixels(bundle, batch=2)


@pytest.mark.parametrize("layer", [0, 1])
def test_fast_equals_literal(tiny_case, layer):
    visual, pixels = tiny_case
    trace = trace_vit(visual, pixels, mlp_layers=[layer])
    basis = second_order_basis(visual, layer)
    fast = {mode: second_order_effects(trace, basis, mode=mode) for mode in MODES}
    for b in range(pixels.shape[0]):
        literal = {mode: literal_second_order(visual, pixels[b], layer, mode=mode) for mode in MODES}
        for mode in MODES:
            assert _relative(fast[mode][b], literal[mode]) < 1e-5
        # the bias and mean shares on their own (a small part of the total) agree as tightly
        shares_fast = fast["paper"][b] - fast["linear"][b]
        shares_literal = literal["paper"] - literal["linear"]
        assert _relative(shares_fast, shares_literal) < 1e-4


def test_fast_equals_literal_vit_b32():
    bundle = load_clip("ViT-B-32/none")
    pixels = random_pixels(bundle, batch=1)
    layer, neurons = 10, [0, 5, 700, 1500, 3071]
    with _random_affine_in_place(bundle.model.visual) as visual:
        trace = trace_vit(visual, pixels, mlp_layers=[layer])
        basis = second_order_basis(visual, layer)
        for mode in MODES:
            fast = second_order_effects(trace, basis, mode=mode, neurons=neurons)[0]
            literal = literal_second_order(visual, pixels[0], layer, mode=mode, neurons=neurons)
            assert _relative(fast, literal) < 1e-4


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_sum_over_neurons_is_the_layer_path(tiny_case, layer, mode):
    visual, pixels = tiny_case
    trace = trace_vit(visual, pixels, mlp_layers=[layer])
    effects = second_order_effects(trace, second_order_basis(visual, layer), mode=mode)
    path = layer_second_order_path(trace, visual, layer, mode=mode)
    assert _relative(effects.sum(1), path) < 1e-5


def test_linear_mode_is_linear_in_the_neuron_writes(tiny):
    visual = _with_random_affine(tiny.model.visual)
    trace = trace_vit(visual, random_pixels(tiny), mlp_layers=[0])
    basis = second_order_basis(visual, 0)
    doubled = copy.deepcopy(visual)
    with torch.no_grad():
        doubled.transformer.resblocks[0].mlp.c_proj.weight.mul_(2.0)
    basis_doubled = second_order_basis(doubled, 0)
    linear = second_order_effects(trace, basis, mode="linear")
    assert torch.allclose(second_order_effects(trace, basis_doubled, mode="linear"), 2 * linear, rtol=1e-5, atol=1e-6)
    # the bias and mean shares do not scale with the writes
    paper = second_order_effects(trace, basis)
    assert not torch.allclose(second_order_effects(trace, basis_doubled), 2 * paper, rtol=1e-2)
    # and in the activations: p -> 3 p triples the linear part
    tripled = dataclasses.replace(trace, mlp_post={0: 3 * trace.mlp_post[0]})
    assert torch.allclose(second_order_effects(tripled, basis, mode="linear"), 3 * linear, rtol=1e-5, atol=1e-6)


def test_scalars_are_attention_weighted_activations(tiny):
    visual = tiny.model.visual
    trace = trace_vit(visual, random_pixels(tiny), mlp_layers=[1])
    scalars = second_order_scalars(trace, second_order_basis(visual, 1))  # [batch, later, head, neuron]
    b, head, neuron = 1, 2, 17
    alpha, std = trace.attn_cls[b, 2, head], trace.ln1_std[b, 2]
    expected = sum(alpha[i] * trace.mlp_post[1][b, i, neuron] / std[i] for i in range(alpha.shape[0]))
    assert torch.isclose(scalars[b, 0, head, neuron], expected, rtol=1e-5)


def test_neuron_subsets_and_chunks_match_the_full_result(tiny):
    visual = _with_random_affine(tiny.model.visual)
    trace = trace_vit(visual, random_pixels(tiny), mlp_layers=[1])
    basis = second_order_basis(visual, 1)
    full = second_order_effects(trace, basis)
    subset = [5, 0, 191]
    assert torch.allclose(second_order_effects(trace, basis, neurons=subset), full[:, subset])
    assert torch.allclose(second_order_effects(trace, basis, chunk=50), full)
    assert _relative(second_order_effects(trace, basis, coefficient=1.0) * 100, full) < 1e-6


def test_planted_direction_through_one_head(tiny):
    """Give neuron 7 of layer 0 a c_proj column whose path through head 1 of layer 2 is a chosen vector;
    with every other later head silenced, its linear effect points exactly there."""
    visual = copy.deepcopy(tiny.model.visual)
    blocks = visual.transformer.resblocks
    neuron, later, head = 7, 2, 1
    heads = blocks[later].attn.num_heads
    d_head = blocks[later].attn.embed_dim // heads
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for index in (1, 2):
            for h in range(heads):
                if (index, h) != (later, head):
                    blocks[index].attn.out_proj.weight[:, h * d_head:(h + 1) * d_head] = 0.0
        value_rows = blocks[later].attn.in_proj_weight[2 * blocks[later].attn.embed_dim:][head * d_head:(head + 1) * d_head]
        chosen_value = torch.randn(d_head, generator=generator)
        # ln_1's gain divides out so that W_V (gamma_1 * w) = chosen_value
        column = torch.linalg.pinv(value_rows) @ chosen_value / blocks[later].ln_1.weight
        blocks[0].mlp.c_proj.weight[:, neuron] = column
    target = chosen_value @ fold_weights(visual).head_out[later, head]  # [d_out]
    basis = second_order_basis(visual, 0)
    assert torch.allclose(basis.directions[neuron, later - 1, head], target, atol=1e-5)

    pixels = random_pixels(tiny, batch=2)
    trace = trace_vit(visual, pixels, mlp_layers=[0])
    effects = second_order_effects(trace, basis, mode="linear")
    scalars = second_order_scalars(trace, basis)[:, later - 1, head, neuron]
    cosine = torch.nn.functional.cosine_similarity(effects[:, neuron], target[None], dim=-1)
    assert torch.allclose(cosine, torch.sign(scalars), atol=1e-5)
    # an untouched neuron does not point there
    assert cosine.abs().min() > torch.nn.functional.cosine_similarity(effects[:, 8], target[None], dim=-1).abs().max() + 0.1


def test_basis_follows_weight_edits(tiny):
    visual = copy.deepcopy(tiny.model.visual)
    before = second_order_basis(visual, 1).directions.clone()
    with torch.no_grad():
        visual.transformer.resblocks[2].attn.in_proj_weight.mul_(2.0)
    assert torch.allclose(second_order_basis(visual, 1).directions, 2 * before, rtol=1e-5, atol=1e-7)


def test_errors(tiny):
    visual = tiny.model.visual
    n_layers = len(visual.transformer.resblocks)
    with pytest.raises(ConfigError, match=f"layer {n_layers - 1} has no later attention layers"):
        second_order_basis(visual, n_layers - 1)
    with pytest.raises(ConfigError, match="no later attention layers"):
        layer_second_order_path(trace_vit(visual, random_pixels(tiny), mlp_layers=[n_layers - 1]), visual, n_layers - 1)
    with pytest.raises(IndexRangeError, match="layer"):
        second_order_basis(visual, n_layers)
    basis = second_order_basis(visual, 0)
    trace = trace_vit(visual, random_pixels(tiny), mlp_layers=[0])
    with pytest.raises(IndexRangeError, match="neuron 192 is out of range"):
        second_order_effects(trace, basis, neurons=[3, 192])
    with pytest.raises(ConfigError, match="mlp_layers=\\[0\\]"):
        second_order_effects(trace_vit(visual, random_pixels(tiny), mlp_layers=[1]), basis)
    with pytest.raises(ConfigError, match="mode"):
        second_order_effects(trace, basis, mode="centered")
    truncated = dataclasses.replace(trace, mlp_post={0: trace.mlp_post[0][..., :10]})
    with pytest.raises(ConfigError, match="different models"):
        second_order_effects(truncated, basis)
