"""Validation 1, exactness: the per-path parts of a neuron's second-order effect add up to the effect the project
already computes (both conventions), equal a slow literal per-head computation, and the data edges add up to
<phi_n, t>. Plus the weight edges, the streamed aggregation and paper 2's selection of active images."""

import copy

import pytest
import torch

import core.world  # noqa: F401  (registers the generated world's images)
from core.circuits.edges import (DataEdgeAccumulator, data_edges, head_in_edges, path_map_norms, select_active,
                                 weight_edges)
from core.circuits.paths import own_edges, path_edges, path_parts, path_terms, path_weights
from core.circuits.reference import literal_path_parts
from core.engine.imagesets import ImageSet
from core.engine.models import load_clip
from core.engine.trace import trace_vit
from core.errors import ConfigError, IndexRangeError
from core.neurons.second_order import MODES, bias_paths, second_order_basis, second_order_effects
from core.neurons.stats import neuron_stats
from tests.conftest import TINY_SPECS, random_pixels

RTOL = 1e-5


def _relative(a, b):
    """Largest relative error over the leading dims (each vector against its own norm)."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)).max())


def _with_random_affine(visual, seed=0):
    """A copy whose LayerNorm affines, biases and LayerScales are random (open_clip's init leaves them at 0 or
    1, which would hide mistakes in the bias and mean shares)."""
    visual = copy.deepcopy(visual)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if param.ndim == 1:
                if name.endswith(("weight", "gamma")):
                    param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))
                else:
                    param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return visual


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy")


@pytest.fixture(scope="module")
def toy_pixels(toy):
    images = ImageSet.world(4, seed=21, split="heldout")
    return torch.cat([pixels for _, pixels in images.batches(toy.preprocess, 4)])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_parts_sum_to_the_second_order_effect_for_every_neuron_of_toy(toy, toy_pixels, layer):
    visual = toy.model.visual
    trace = trace_vit(visual, toy_pixels, mlp_layers=[layer])
    basis = second_order_basis(visual, layer)
    weights = path_weights(visual, layer)  # every neuron: 384 x (later x head) x d_out is small on the toy
    assert len(weights.neurons) == toy.info.d_mlp
    for mode in MODES:
        terms = path_terms(trace, bias_paths(visual, layer), mode=mode)
        summed = path_parts(terms, weights).sum((2, 3))  # [batch, neuron, d_out]
        assert _relative(summed, second_order_effects(trace, basis, mode=mode)) <= RTOL, mode


@pytest.mark.slow
def test_parts_sum_on_random_vit_b16():
    bundle = load_clip("ViT-B-16/none")
    visual = bundle.model.visual
    pixels = random_pixels(bundle, batch=1)
    layer, neurons = 10, [0, 1234, 3071]
    trace = trace_vit(visual, pixels, mlp_layers=[layer])
    weights = path_weights(visual, layer, neurons)
    basis = second_order_basis(visual, layer)
    for mode in MODES:
        parts = path_parts(path_terms(trace, bias_paths(visual, layer), neurons=neurons, mode=mode), weights)
        assert _relative(parts.sum((2, 3)), second_order_effects(trace, basis, mode=mode, neurons=neurons)) <= RTOL
        literal = literal_path_parts(visual, pixels[0], layer, neurons[:1], mode=mode)
        assert _relative(parts[0, :1], literal) <= 1e-4  # head by head, float32 sums in another order


@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("mode", MODES)
def test_each_path_equals_the_literal_per_head_computation(spec, mode):
    bundle = load_clip(spec)
    visual = _with_random_affine(bundle.model.visual)
    pixels = random_pixels(bundle, batch=2)
    neurons = [0, 7, 191]
    for layer in (0, 1):
        trace = trace_vit(visual, pixels, mlp_layers=[layer])
        parts = path_parts(path_terms(trace, bias_paths(visual, layer), neurons=neurons, mode=mode),
                           path_weights(visual, layer, neurons))
        for b in range(2):
            literal = literal_path_parts(visual, pixels[b], layer, neurons, mode=mode)
            assert _relative(parts[b], literal) <= RTOL * 10, (layer, b)


def test_data_edges_sum_to_the_projection_of_the_effect(toy, toy_pixels):
    visual = toy.model.visual
    layer, neurons = 1, [3, 5, 300]
    trace = trace_vit(visual, toy_pixels, mlp_layers=[layer])
    phi = second_order_effects(trace, second_order_basis(visual, layer), neurons=neurons)
    weights = path_weights(visual, layer, neurons)
    terms = path_terms(trace, bias_paths(visual, layer), neurons=neurons)
    texts = torch.nn.functional.normalize(torch.randn(5, toy.info.d_out, generator=torch.Generator().manual_seed(1)),
                                          dim=-1)
    edges = path_edges(terms, weights, texts)  # [batch, neuron, later, head, text]
    torch.testing.assert_close(edges.sum((2, 3)), phi @ texts.T, rtol=RTOL, atol=1e-6)
    own = own_edges(terms, weights, texts[:3])  # one target per neuron
    torch.testing.assert_close(own.sum((2, 3)), torch.einsum("bno,no->bn", phi, texts[:3]), rtol=RTOL, atol=1e-6)
    # the parts themselves, projected, are the edges
    torch.testing.assert_close(torch.einsum("bnlho,to->bnlht", path_parts(terms, weights), texts), edges,
                               rtol=1e-4, atol=1e-6)


def test_streamed_data_edges_do_not_depend_on_batching_chunks_or_order(toy):
    visual = toy.model.visual
    images = ImageSet.world(24, seed=5, split="heldout")
    layer, neurons = 0, [1, 2, 50, 383]
    targets = torch.nn.functional.normalize(torch.randn(4, toy.info.d_out, generator=torch.Generator().manual_seed(2)),
                                            dim=-1)
    active = torch.tensor([[0, 3, 5], [1, 2, 23], [7, 8, 9], [4, 6, 10]])
    one = data_edges(visual, layer, images.batches(toy.preprocess, 24), targets, neurons=neurons, active=active)
    batched = list(images.batches(toy.preprocess, 5))
    other = data_edges(visual, layer, reversed(batched), targets, neurons=neurons, active=active, chunk=3)
    torch.testing.assert_close(one.mean, other.mean, rtol=1e-5, atol=1e-7)
    assert one.count.tolist() == [3, 3, 3, 3]
    # the mean of each neuron is over its own images, and equals <phi_n, t_n> there
    pixels = torch.cat([p for _, p in images.batches(toy.preprocess, 24)])
    phi = second_order_effects(trace_vit(visual, pixels, mlp_layers=[layer]), second_order_basis(visual, layer),
                               neurons=neurons)
    expected = torch.stack([(phi[active[i], i] @ targets[i]).mean() for i in range(4)])
    torch.testing.assert_close(one.total, expected, rtol=1e-5, atol=1e-6)
    share = one.share()
    torch.testing.assert_close(share.abs().sum((1, 2)), torch.ones(4))
    # one target shared by every neuron is the same as that target given to each
    shared = data_edges(visual, layer, batched, targets[:1], neurons=neurons, active=active)
    each = data_edges(visual, layer, batched, targets[:1].repeat(4, 1), neurons=neurons, active=active)
    torch.testing.assert_close(shared.mean, each.mean, rtol=1e-5, atol=1e-7)


def test_active_images_are_paper_2s_selection(toy):
    visual = toy.model.visual
    images = ImageSet.world(24, seed=3, split="heldout")
    batches = lambda: images.batches(toy.preprocess, 12)  # noqa: E731
    neurons = [5, 17, 200]
    active = select_active(visual, 1, batches, neurons=neurons, k=6, chunk=2)
    stats = neuron_stats(visual, 1, batches, k=6)
    assert torch.equal(active.ids, stats.top_images[neurons])
    torch.testing.assert_close(active.pcs, stats.pcs[neurons], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(active.mean, stats.mean[neurons], rtol=1e-5, atol=1e-6)


def test_weight_edges(toy):
    visual = toy.model.visual
    layer = 0
    target = torch.nn.functional.normalize(torch.randn(1, toy.info.d_out, generator=torch.Generator().manual_seed(4)),
                                           dim=-1)
    edges = weight_edges(visual, layer, targets=target, target="t", chunk=100)
    assert edges.composition.shape == (toy.info.d_mlp, 3, toy.info.n_heads)
    assert float(edges.composition.min()) >= 0 and float(edges.composition.max()) <= 1
    weights = path_weights(visual, layer, [0, 9])
    u = weights.directions()
    from core.neurons.second_order import mlp_output_weights

    w, _ = mlp_output_weights(visual.transformer.resblocks[layer])
    expected = u.norm(dim=-1) / (w[:, [0, 9]].norm(dim=0)[:, None, None] * path_map_norms(visual, layer)[None])
    torch.testing.assert_close(edges.composition[[0, 9]], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(edges.signed[[0, 9]], (u @ target[0]), rtol=1e-5, atol=1e-7)
    # the map's Frobenius norm, literally
    block = visual.transformer.resblocks[2]
    from core.engine.contributions import fold_weights

    w_v = block.attn.in_proj_weight[2 * 96:].reshape(4, 24, 96)
    literal = (fold_weights(visual).head_out[2, 1].T @ w_v[1] * block.ln_1.weight).norm()
    torch.testing.assert_close(path_map_norms(visual, layer)[1, 1], literal.detach(), rtol=1e-5, atol=0)
    # the same edges read by column: a head's in-edges
    into = head_in_edges(visual, (2, 1), [0], targets={0: target}, target="t")
    torch.testing.assert_close(into.composition[0], edges.composition[:, 1, 1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(into.signed[0], edges.signed[:, 1, 1], rtol=1e-5, atol=1e-7)
    ranked = into.ranked(5)
    assert [abs(r[2]) for r in ranked] == sorted((abs(r[2]) for r in ranked), reverse=True)


def test_bad_inputs_are_clear_errors(toy, toy_pixels):
    visual = toy.model.visual
    with pytest.raises(ConfigError, match="no later attention layers"):
        path_weights(visual, 3)
    with pytest.raises(IndexRangeError, match="neuron 384"):
        path_weights(visual, 1, [384])
    with pytest.raises(ConfigError, match="not after"):
        path_weights(visual, 1, [0], later=[1])
    trace = trace_vit(visual, toy_pixels, mlp_layers=[1])
    with pytest.raises(ConfigError, match="different"):
        path_parts(path_terms(trace, bias_paths(visual, 1), neurons=[1]), path_weights(visual, 1, [2]))
    with pytest.raises(ConfigError, match="targets must be"):
        weight_edges(visual, 1, neurons=[1, 2], targets=torch.zeros(3, 96))
    with pytest.raises(ConfigError, match="NaN"):
        DataEdgeAccumulator(visual, 1, torch.full((1, 96), float("nan")), neurons=[1])
    with pytest.raises(ConfigError, match="mode"):
        path_terms(trace, bias_paths(visual, 1), mode="centered")
    with pytest.raises(ConfigError, match="in-edges"):
        head_in_edges(visual, (1, 0), [1])
