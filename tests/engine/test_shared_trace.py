"""One traced forward, many lenses: the shared-trace cache returns covering traces, keys on model, images and
options, stays bounded, and is private to a scope (public mode: no cache outside one)."""

import pytest
import torch

from core import settings
from core.engine.contributions import direct_effects, fold_weights, spatial_value_maps
from core.engine.models import load_clip
from core.engine.shared_trace import TraceCache, active_cache, shared_trace, trace_bytes, trace_scope
from core.engine.trace import trace_vit
from core.neurons.second_order import second_order_basis, second_order_effects
from tests.conftest import random_pixels


@pytest.fixture
def cache():
    with trace_scope() as scoped:
        yield scoped


def test_covering_trace_is_reused_and_equals_a_fresh_one(tiny, cache):
    visual, pixels = tiny.model.visual, random_pixels(tiny)
    plain = shared_trace(visual, pixels)
    assert shared_trace(visual, pixels.clone()) is plain  # same bytes, another tensor: no new forward
    with_layer = shared_trace(visual, pixels, mlp_layers=[1])  # needs more: one trace with the union
    assert with_layer is not plain and set(with_layer.mlp_post) == {1}
    assert shared_trace(visual, pixels) is with_layer and shared_trace(visual, pixels, mlp_layers=[1]) is with_layer
    assert len(cache) == 1
    fresh = trace_vit(visual, pixels, mlp_layers=[1])
    for name in ("embedding", "attn_cls", "ln1_std", "head_cls"):
        assert torch.equal(getattr(with_layer, name), getattr(fresh, name)), name
    # the lenses read it as they read their own trace
    basis = second_order_basis(visual, 1)
    assert torch.equal(second_order_effects(with_layer, basis), second_order_effects(fresh, basis))


def test_keys_follow_images_weights_and_value_maps(cache):
    bundle = load_clip("Tiny-ViT-LayerScale/none")
    visual, pixels = bundle.model.visual, random_pixels(bundle)
    first = shared_trace(visual, pixels)
    assert shared_trace(visual, random_pixels(bundle, seed=1)) is not first
    with torch.no_grad():
        visual.transformer.resblocks[0].attn.out_proj.weight.mul_(2.0)
    try:
        assert shared_trace(visual, pixels) is not first  # an edited weight is another model
    finally:
        with torch.no_grad():
            visual.transformer.resblocks[0].attn.out_proj.weight.div_(2.0)
    folded = fold_weights(visual)
    texts = torch.randn(3, bundle.info.d_out, generator=torch.Generator().manual_seed(0))
    mapped = shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, texts))
    assert shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, texts)) is mapped
    other = shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, texts[:2]))
    assert other is not mapped
    kept = shared_trace(visual, pixels, keep_values=True)
    # a trace that kept the values serves any directions, through the same direct_effects
    assert shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, texts)) is kept
    a = direct_effects(kept, folded, spatial=True, directions=texts).tokens
    b = direct_effects(mapped, folded, spatial=True, directions=texts).tokens
    assert torch.allclose(a, b, atol=1e-6)


def test_cache_is_bounded(tiny):
    visual = tiny.model.visual
    with trace_scope(TraceCache(max_entries=2)) as cache:
        traces = [shared_trace(visual, random_pixels(tiny, seed=seed)) for seed in range(3)]
        assert len(cache) == 2
        assert shared_trace(visual, random_pixels(tiny, seed=2)) is traces[2]
        assert shared_trace(visual, random_pixels(tiny, seed=0)) is not traces[0]  # evicted first (LRU)
    size = trace_bytes(traces[0])
    with trace_scope(TraceCache(max_bytes=size + 1)) as cache:
        shared_trace(visual, random_pixels(tiny, seed=0))
        shared_trace(visual, random_pixels(tiny, seed=1))
        assert len(cache) == 1


def test_scopes_are_private_and_public_mode_caches_nothing_outside_one(tiny):
    visual, pixels = tiny.model.visual, random_pixels(tiny)
    with trace_scope():
        inside = shared_trace(visual, pixels)
    with trace_scope():
        assert shared_trace(visual, pixels) is not inside
    with settings.overridden(public=True):
        assert active_cache() is None
        assert shared_trace(visual, pixels) is not shared_trace(visual, pixels)
        with trace_scope() as scoped:
            assert active_cache() is scoped


def test_a_segmentation_pays_one_forward_for_its_maps_and_cosines():
    from core.segmentation.segment import segment_image
    from core.world.scenes import heldout_scenes

    bundle = load_clip("toy")
    image = next(iter(heldout_scenes(1, seed=7)))[0]
    with trace_scope() as cache:
        result = segment_image(bundle, image, ["a red circle", "a green cross"], method="heads")
        assert len(cache) == 1 and cache.hits == 1 and cache.misses == 1
    with torch.inference_mode():
        pixels = bundle.preprocess(image)[None]
        expected = torch.nn.functional.normalize(bundle.model.encode_image(pixels), dim=-1)
    from core.engine.text import encode_texts
    cosine = (expected @ encode_texts(bundle, ["a red circle", "a green cross"]).T)[0]
    assert torch.allclose(torch.tensor(result.cosine), cosine, atol=1e-5)
