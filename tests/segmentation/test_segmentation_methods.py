"""Each method against a slow, literal implementation of its definition, on small random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.engine.models import load_clip
from core.engine.reference import literal_direct_effects
from core.engine.trace import attention_forward, trace_vit
from core.errors import BasesError, ConfigError, IndexRangeError
from core.segmentation.methods import MethodOptions, Segmenter, Targets, parse_heads
from core.segmentation.reference import literal_heads_map, original_spatial_path
from tests.conftest import random_pixels


def _texts(bundle, n: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, bundle.info.d_out, generator=generator), dim=-1)


def _mha_patterns(visual, pixels) -> list[torch.Tensor]:
    """Every block's attention weights [batch, head, query, key] from nn.MultiheadAttention itself."""
    captured = []
    hooks = [block.ln_1.register_forward_hook(lambda m, i, o: captured.append(o)) for block in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            visual(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    patterns = []
    for block, x_norm in zip(visual.transformer.resblocks, captured):
        with torch.no_grad():
            _, weights = block.attn(x_norm, x_norm, x_norm, need_weights=True, average_attn_weights=False)
        patterns.append(weights)
    return patterns


@pytest.mark.parametrize("spec", ["Tiny-ViT/none", "Tiny-ViT-LayerScale/none"])
@pytest.mark.parametrize("convention", ["paper", "centered"])
def test_heads_map_equals_the_sum_of_the_spatial_decomposition(spec, convention):
    bundle = load_clip(spec)
    pixels, texts = random_pixels(bundle, batch=3), _texts(bundle)
    chosen = torch.tensor([[0, 2], [1, 4], [3, 3]])
    subset = ((0, 1), (1, 0), (1, 3))
    for heads in (None, subset):
        segmenter = Segmenter(bundle, "heads", MethodOptions(heads=heads, convention=convention))
        plain, subtracted = (segmenter(pixels, Targets(texts, chosen, subtract)) for subtract in (False, True))
        assert plain.grids.shape == (3, 2, *bundle.info.grid)
        for i in range(3):
            directions = torch.cat([texts[chosen[i]], texts[chosen[i]] - texts.mean(0)])
            literal = literal_heads_map(bundle.model.visual, pixels[i], directions, convention=convention,
                                        heads=list(subset) if heads else None)
            assert torch.allclose(plain.grids[i].flatten(1), literal[:2], atol=1e-7, rtol=1e-5)
            assert torch.allclose(subtracted.grids[i].flatten(1), literal[2:], atol=1e-7, rtol=1e-5)


def test_heads_predicted_class_and_class_mean_subtraction_is_linear(tiny):
    pixels, texts = random_pixels(tiny, batch=4, seed=3), _texts(tiny, 6, seed=1)
    segmenter = Segmenter(tiny, "heads")
    predicted = segmenter(pixels, Targets(texts))
    with torch.inference_mode():
        cosine = F.normalize(tiny.model.encode_image(pixels), dim=-1) @ texts.T
    assert predicted.chosen[:, 0].tolist() == cosine.argmax(-1).tolist() == predicted.predicted.tolist()
    every = segmenter(pixels, Targets(texts, torch.arange(6).repeat(4, 1)))
    subtracted = segmenter(pixels, Targets(texts, predicted.chosen, subtract_mean=True))
    expected = every.grids[torch.arange(4), predicted.chosen[:, 0]] - every.grids.mean(1)
    assert torch.allclose(subtracted.grids[:, 0], expected, atol=1e-7)


def test_the_papers_spatial_path_equals_the_literal_decomposition(tiny):
    image = random_pixels(tiny, batch=1)[0]
    literal = literal_direct_effects(tiny.model.visual, image)["tokens"]
    assert torch.allclose(original_spatial_path(tiny.model.visual, image), literal, atol=1e-6)


@pytest.mark.parametrize("spec", ["Tiny-ViT/none", "Tiny-ViT-LayerScale/none"])
def test_attention_forward_matches_open_clip(spec):
    bundle = load_clip(spec)
    visual = bundle.model.visual
    pixels = random_pixels(bundle, batch=2)
    with torch.no_grad():
        embedding, patterns = attention_forward(visual, pixels)
        expected = bundle.model.encode_image(pixels)
    assert torch.allclose(embedding, expected, atol=1e-5)
    for ours, theirs in zip(patterns, _mha_patterns(visual, pixels)):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_raw_attention_and_rollout_equal_their_definitions(tiny):
    visual = tiny.model.visual
    pixels, texts = random_pixels(tiny, batch=2, seed=4), _texts(tiny)
    patterns = _mha_patterns(visual, pixels)
    grid = tiny.info.grid
    raw = Segmenter(tiny, "raw-attention")(pixels, Targets(texts))
    assert torch.allclose(raw.grids[:, 0], patterns[-1][:, :, 0, 1:].mean(1).reshape(2, *grid), atol=1e-6)
    for start in (0, 1):
        out = Segmenter(tiny, "rollout", MethodOptions(rollout_start=start))(pixels, Targets(texts))
        for b in range(2):
            joint = torch.eye(tiny.info.n_tokens, dtype=torch.float64)
            for pattern in patterns[start:]:  # Abnar & Zuidema: A^ = 0.5 mean_h A + 0.5 I, then the product
                fused = 0.5 * pattern[b].double().mean(0) + 0.5 * torch.eye(tiny.info.n_tokens, dtype=torch.float64)
                joint = fused @ joint
            assert torch.allclose(out.grids[b, 0].double(), joint[0, 1:].reshape(grid), atol=1e-6)


def _last_block_gradient(bundle, pixels, direction):
    """d s / d A of the last block, with A a leaf tensor of a hand-written last block (independent of
    attention_forward's graph), s = logit_scale * cos(image, direction)."""
    visual = bundle.model.visual
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        x = visual._embeds(pixels)
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        x_norm = last.ln_1(x)
        _, weights = last.attn(x_norm, x_norm, x_norm, need_weights=True, average_attn_weights=False)
    leaf = weights.clone().requires_grad_(True)
    heads, width = last.attn.num_heads, x.shape[-1]
    v = F.linear(x_norm, *[t.chunk(3)[2] for t in (last.attn.in_proj_weight, last.attn.in_proj_bias)])
    v = v.reshape(*v.shape[:2], heads, -1).transpose(1, 2)
    merged = (leaf @ v).transpose(1, 2).reshape(*x.shape)
    y = x + last.ls_1(last.attn.out_proj(merged))
    y = y + last.ls_2(last.mlp(last.ln_2(y)))
    embedding = visual.ln_post(y[:, 0]) @ visual.proj
    score = (bundle.model.logit_scale.exp() * F.normalize(embedding, dim=-1) @ direction).sum()
    score.backward()
    return weights, leaf.grad


def test_gradcam_and_chefer_equal_their_definitions_on_the_last_block(tiny):
    pixels, texts = random_pixels(tiny, batch=2, seed=6), _texts(tiny, 3, seed=2)
    chosen = torch.tensor([[1], [2]])
    grid = tiny.info.grid
    gradcam = Segmenter(tiny, "gradcam")(pixels, Targets(texts, chosen))
    chefer = Segmenter(tiny, "chefer")(pixels, Targets(texts, chosen))
    for b in range(2):
        weights, grad = _last_block_gradient(tiny, pixels[b:b + 1], texts[chosen[b, 0]])
        assert grad[0, :, 1:].abs().max() == 0  # only the class-token row reaches the output
        rows, grad_rows = weights[0, :, 0, 1:], grad[0, :, 0, 1:]
        expected_cam = (grad_rows.mean(-1, keepdim=True) * rows).mean(0).clamp(min=0)
        assert torch.allclose(gradcam.grids[b, 0].flatten(), expected_cam, atol=1e-6, rtol=1e-4)
        expected_relevancy = (grad[0] * weights[0]).clamp(min=0).mean(0)[0, 1:]
        assert torch.allclose(chefer.grids[b, 0].flatten(), expected_relevancy, atol=1e-6, rtol=1e-4)


def test_chefer_over_all_blocks_accumulates_relevancy(tiny):
    pixels, texts = random_pixels(tiny, batch=1, seed=8), _texts(tiny, 2)
    last = Segmenter(tiny, "chefer")(pixels, Targets(texts, torch.tensor([[0]]))).grids
    every = Segmenter(tiny, "chefer", MethodOptions(chefer_start=0))(pixels, Targets(texts, torch.tensor([[0]]))).grids
    assert every.shape == last.shape and not torch.allclose(every, last)
    assert (every >= 0).all()


def _toy_pool_texts(toy):
    from core.engine.text import encode_texts

    return encode_texts(toy, ["a red circle", "a blue square", "a striped background"])


def test_neuron_maps_average_the_top_neurons_activation_maps():
    toy = load_clip("toy")
    segmenter = Segmenter(toy, "neurons", MethodOptions(top_k=7))
    pool = segmenter.pool
    assert pool.layers == (0, 1, 2)
    texts = _toy_pool_texts(toy)
    pixels = random_pixels(toy, batch=2, seed=9)
    chosen = torch.tensor([[0, 1], [2, 0]])
    out = segmenter(pixels, Targets(texts, chosen))
    trace = trace_vit(toy.model.visual, pixels, mlp_layers=[0, 1, 2])
    scores = pool.pcs @ texts.double().T  # [candidate, text]
    for b in range(2):
        for j in range(2):
            t = int(chosen[b, j])
            ranked = sorted(range(len(scores)), key=lambda n: (-abs(float(scores[n, t])), n))[:7]
            expected = torch.stack([trace.mlp_post[int(pool.layer_of[n])][b, 1:, int(pool.neuron_of[n])]
                                    for n in ranked]).mean(0)
            assert torch.allclose(out.grids[b, j].flatten(), expected, atol=1e-6)
            signed = Segmenter(toy, "neurons", MethodOptions(top_k=7, sign_weight=True))(pixels, Targets(texts, chosen))
            signs = torch.tensor([float(np.sign(float(scores[n, t]))) for n in ranked])
            expected_signed = (torch.stack([trace.mlp_post[int(pool.layer_of[n])][b, 1:, int(pool.neuron_of[n])]
                                            for n in ranked]) * signs[:, None]).mean(0)
            assert torch.allclose(signed.grids[b, j].flatten(), expected_signed, atol=1e-6)


def test_random_neurons_are_seeded_and_differ_from_the_top_ones():
    toy = load_clip("toy")
    texts = _toy_pool_texts(toy)
    top = Segmenter(toy, "neurons").pool.select(texts, 20)[0]
    first = Segmenter(toy, "random-neurons", MethodOptions(seed=3)).pool.select(texts, 20, random_seed=3)[0]
    again = Segmenter(toy, "random-neurons", MethodOptions(seed=3)).pool.select(texts, 20, random_seed=3)[0]
    other = Segmenter(toy, "random-neurons").pool.select(texts, 20, random_seed=4)[0]
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, top)
    assert all(len(set(row.tolist())) == 20 for row in first)


def test_neuron_options_and_bases_are_checked(tiny):
    toy = load_clip("toy")
    with pytest.raises(ConfigError, match="cover layer"):
        Segmenter(toy, "neurons", MethodOptions(neuron_layers=(3,)))
    with pytest.raises(ConfigError, match="top-k"):
        Segmenter(toy, "neurons", MethodOptions(top_k=5000))(random_pixels(toy, 1), Targets(_toy_pool_texts(toy)))
    with pytest.raises(BasesError, match="another model|model"):
        Segmenter(tiny, "neurons", MethodOptions(bases="core/data/toy/bases"))


def test_method_arguments_are_checked(tiny):
    with pytest.raises(ConfigError, match="unknown method"):
        Segmenter(tiny, "lrp")
    with pytest.raises(IndexRangeError):
        parse_heads("7.0", tiny.info.n_layers, tiny.info.n_heads)
    with pytest.raises(ConfigError, match="must look like"):
        parse_heads("1-2", tiny.info.n_layers, tiny.info.n_heads)
    assert parse_heads("1.2, 0.1,1.2", 2, 4) == ((0, 1), (1, 2))
    with pytest.raises(IndexRangeError, match="chefer start"):
        Segmenter(tiny, "chefer", MethodOptions(chefer_start=9))
