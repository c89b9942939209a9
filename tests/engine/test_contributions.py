"""Direct effects: exact sums, equality with the literal per-component equations, projections."""

import pytest
import torch

from core.engine.contributions import CONVENTIONS, cls_to_cls, direct_effects, fold_weights, spatial_value_maps
from core.errors import ConfigError
from core.engine.models import load_clip
from core.engine.reference import literal_direct_effects
from core.engine.trace import trace_vit
from tests.conftest import TINY_SPECS, random_pixels

SUM_SPECS = TINY_SPECS + ("ViT-B-32/none", "ViT-B-16/none", pytest.param("ViT-L-14/none", marks=pytest.mark.slow),
                          "ViT-B-32-quickgelu/none")  # ViT-L-14 takes over 20 s on 2 cores


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("spec", SUM_SPECS)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_components_sum_to_encode_image(spec, convention):
    bundle = load_clip(spec)
    pixels = random_pixels(bundle, batch=1)
    with torch.inference_mode():
        expected = bundle.model.encode_image(pixels)
    visual = bundle.model.visual
    trace = trace_vit(visual, pixels, keep_values=True)
    folded = fold_weights(visual)
    effects = direct_effects(trace, folded, convention=convention, spatial=True)
    assert _relative(effects.total(), expected) < 1e-5
    # the spatial cells add up to the per-head terms
    assert _relative(effects.tokens.sum(3), effects.heads) < 1e-5
    # the unit-text scores sum to the cosine similarity
    texts = torch.nn.functional.normalize(torch.randn(4, expected.shape[-1], generator=torch.Generator().manual_seed(1)), dim=-1)
    scores = direct_effects(trace, folded, convention=convention, spatial=True, directions=texts).scores()
    cosine = torch.nn.functional.normalize(expected, dim=-1) @ texts.T
    assert torch.allclose(scores.total(), cosine, atol=1e-5)
    assert torch.allclose(scores.tokens.sum(3), scores.heads, atol=1e-6)


@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_fast_equals_literal_equations(spec, convention):
    bundle = load_clip(spec)
    visual = bundle.model.visual
    pixels = random_pixels(bundle, batch=2)
    trace = trace_vit(visual, pixels, keep_values=True)
    effects = direct_effects(trace, fold_weights(visual), convention=convention, spatial=True)
    for b in range(2):
        literal = literal_direct_effects(visual, pixels[b], convention)
        scale = literal["embedding"].norm()
        assert (effects.embedding_term[b] - literal["embedding_term"]).norm() / scale < 1e-5
        assert (effects.mlps[b] - literal["mlps"]).norm() / scale < 1e-5
        assert (effects.tokens[b] - literal["tokens"]).norm() / scale < 1e-5
        assert (literal["tokens"].sum((0, 1, 2)) + literal["mlps"].sum(0) + literal["embedding_term"] - literal["embedding"]).norm() / scale < 1e-5


def test_conventions_differ_but_agree_in_total(tiny):
    visual = tiny.model.visual
    trace = trace_vit(visual, random_pixels(tiny))
    folded = fold_weights(visual)
    paper = direct_effects(trace, folded, convention="paper")
    centered = direct_effects(trace, folded, convention="centered")
    assert torch.allclose(paper.total(), centered.total(), atol=1e-5)
    assert not torch.allclose(paper.heads, centered.heads, atol=1e-4)


def test_projection_equals_full_vectors_projected(tiny):
    visual = tiny.model.visual
    trace = trace_vit(visual, random_pixels(tiny), keep_values=True)
    folded = fold_weights(visual)
    directions = torch.randn(3, tiny.info.d_out, generator=torch.Generator().manual_seed(2))
    for convention in CONVENTIONS:
        full = direct_effects(trace, folded, convention=convention, spatial=True)
        projected = direct_effects(trace, folded, convention=convention, spatial=True, directions=directions)
        assert torch.allclose(projected.tokens, full.tokens @ directions.T, atol=1e-5)
        assert torch.allclose(projected.mlps, full.mlps @ directions.T, atol=1e-5)
        assert torch.allclose(projected.embedding_term, full.embedding_term @ directions.T, atol=1e-5)
        # the class-token -> class-token path is the spatial term of source token 0
        assert torch.allclose(cls_to_cls(trace, folded, convention=convention), full.tokens[:, :, :, 0], atol=1e-6)


@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_mapped_values_equal_kept_values_and_the_literal_equations(spec, convention):
    """The fast spatial path (values mapped onto the texts layer by layer, never kept) against the path that keeps
    every value vector, and against the literal per-cell equations projected on the texts."""
    bundle = load_clip(spec)
    visual = bundle.model.visual
    pixels = random_pixels(bundle, batch=2)
    folded = fold_weights(visual)
    texts = torch.nn.functional.normalize(torch.randn(5, bundle.info.d_out, generator=torch.Generator().manual_seed(3)), dim=-1)
    mapped_trace = trace_vit(visual, pixels, value_maps=spatial_value_maps(folded, texts))
    assert mapped_trace.values is None and mapped_trace.mapped_values.shape[-1] == 6
    mapped = direct_effects(mapped_trace, folded, convention=convention, spatial=True, directions=texts)
    kept = direct_effects(trace_vit(visual, pixels, keep_values=True), folded, convention=convention, spatial=True,
                          directions=texts)
    assert torch.allclose(mapped.tokens, kept.tokens, atol=1e-6)
    assert torch.equal(mapped.heads, kept.heads)
    for b in range(2):
        literal = literal_direct_effects(visual, pixels[b], convention)
        scale = literal["embedding"].norm()
        assert (mapped.tokens[b] - literal["tokens"] @ texts.T).norm() / scale < 1e-5
    # the full output space (no directions) works the same way
    full = direct_effects(trace_vit(visual, pixels, value_maps=spatial_value_maps(folded)), folded,
                          convention=convention, spatial=True)
    assert _relative(full.tokens.sum(3), full.heads) < 1e-5


def test_mapped_values_refuse_other_directions(tiny):
    visual = tiny.model.visual
    folded = fold_weights(visual)
    texts = torch.randn(3, tiny.info.d_out, generator=torch.Generator().manual_seed(4))
    trace = trace_vit(visual, random_pixels(tiny), value_maps=spatial_value_maps(folded, texts))
    with pytest.raises(ConfigError, match="other directions"):
        direct_effects(trace, folded, spatial=True, directions=texts[:2])
    with pytest.raises(ConfigError, match="other directions"):
        direct_effects(trace, folded, spatial=True, directions=2 * texts)
    with pytest.raises(ConfigError, match="value_maps"):
        trace_vit(visual, random_pixels(tiny), value_maps=torch.zeros(2, 2, 2, 3))


def test_folded_weights_follow_weight_edits(tiny):
    visual = load_clip("Tiny-ViT-LayerScale/none").model.visual
    before = fold_weights(visual).head_out.clone()
    with torch.no_grad():
        visual.transformer.resblocks[0].attn.out_proj.weight.mul_(2.0)
    try:
        assert not torch.allclose(fold_weights(visual).head_out[0], before[0])
    finally:
        with torch.no_grad():
            visual.transformer.resblocks[0].attn.out_proj.weight.div_(2.0)
    assert torch.allclose(fold_weights(visual).head_out, before)


def test_errors(tiny):
    trace = trace_vit(tiny.model.visual, random_pixels(tiny))
    folded = fold_weights(tiny.model.visual)
    with pytest.raises(ConfigError, match="convention"):
        direct_effects(trace, folded, convention="mean")
    with pytest.raises(ConfigError, match="keep_values"):
        direct_effects(trace, folded, spatial=True)
    with pytest.raises(ConfigError, match="directions"):
        direct_effects(trace, folded, directions=torch.zeros(2, 5))
